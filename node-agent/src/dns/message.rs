//! The little of the DNS wire format (RFC 1035) the DNS proxy reads: a query's first
//! question, an answer's code and its address and alias records. Pure: bytes in, values out;
//! a malformed message is an error, never a panic (the bytes come from pods and resolvers).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const TYPE_AAAA: u16 = 28;
/// Response code `REFUSED`: what a query that no DNS rule allows gets.
pub const RCODE_REFUSED: u8 = 5;

const HEADER: usize = 12;
/// Compression pointers followed per name at most (a loop is malformed).
const MAX_JUMPS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("message truncated at byte {0}")]
    Truncated(usize),
    #[error("no question")]
    NoQuestion,
    #[error("bad name at byte {0}")]
    BadName(usize),
}

/// A query's first question (every resolver sends one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub id: u16,
    /// Lower case, without the final dot (`a.example.com`; the root is empty).
    pub name: String,
    pub qtype: u16,
}

/// One address an answer gave, with its record's TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    pub ip: IpAddr,
    pub ttl: u32,
}

/// What the proxy learns from an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub question: Question,
    pub rcode: u8,
    /// The question's name and the aliases (CNAME targets) it leads to, in chain order.
    pub names: Vec<String>,
    /// Addresses of any name of `names`.
    pub addresses: Vec<Address>,
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MessageError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.buf.len());
        let end = end.ok_or(MessageError::Truncated(self.at))?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, MessageError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, MessageError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// A possibly compressed name, lower case, labels joined by '.'.
    fn name(&mut self) -> Result<String, MessageError> {
        let (name, end) = read_name(self.buf, self.at)?;
        self.at = end;
        Ok(name)
    }
}

/// Reads the name at `at`; returns it and where the record goes on.
fn read_name(buf: &[u8], mut at: usize) -> Result<(String, usize), MessageError> {
    let mut out = String::new();
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *buf.get(at).ok_or(MessageError::Truncated(at))? as usize;
        match len & 0xc0 {
            0x00 if len == 0 => {
                return Ok((out, end.unwrap_or(at + 1)));
            }
            0x00 => {
                let label = buf
                    .get(at + 1..at + 1 + len)
                    .ok_or(MessageError::Truncated(at))?;
                if !out.is_empty() {
                    out.push('.');
                }
                out.extend(label.iter().map(|b| b.to_ascii_lowercase() as char));
                if out.len() > 255 {
                    return Err(MessageError::BadName(at));
                }
                at += 1 + len;
            }
            0xc0 => {
                let lo = *buf.get(at + 1).ok_or(MessageError::Truncated(at))? as usize;
                jumps += 1;
                if jumps > MAX_JUMPS {
                    return Err(MessageError::BadName(at));
                }
                end.get_or_insert(at + 2);
                at = ((len & 0x3f) << 8) | lo;
            }
            _ => return Err(MessageError::BadName(at)),
        }
    }
}

fn header_and_question(buf: &[u8]) -> Result<(Reader<'_>, Question, [u16; 4]), MessageError> {
    let mut r = Reader { buf, at: 0 };
    let id = r.u16()?;
    let _flags = r.u16()?;
    let counts = [r.u16()?, r.u16()?, r.u16()?, r.u16()?];
    if counts[0] == 0 {
        return Err(MessageError::NoQuestion);
    }
    let name = r.name()?;
    let qtype = r.u16()?;
    let _class = r.u16()?;
    // Further questions (nobody sends them) are skipped.
    for _ in 1..counts[0] {
        r.name()?;
        r.take(4)?;
    }
    Ok((r, Question { id, name, qtype }, counts))
}

/// The first question of a query.
pub fn question(buf: &[u8]) -> Result<Question, MessageError> {
    header_and_question(buf).map(|(_, q, _)| q)
}

/// Reads an answer: its code, the alias chain from the question's name and the addresses
/// of the chain's names (records of other names are not the question's answer and are
/// ignored, as a resolver's additional records may be).
pub fn answer(buf: &[u8]) -> Result<Answer, MessageError> {
    let (mut r, question, counts) = header_and_question(buf)?;
    let rcode = buf[3] & 0x0f;
    let mut cnames = Vec::new();
    let mut addrs = Vec::new();
    for _ in 0..counts[1] {
        let owner = r.name()?;
        let rtype = r.u16()?;
        let _class = r.u16()?;
        let ttl = r.u32()?;
        let len = r.u16()? as usize;
        let start = r.at;
        let data = r.take(len)?;
        match rtype {
            TYPE_A if len == 4 => {
                let ip = IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
                addrs.push((owner, Address { ip, ttl }));
            }
            TYPE_AAAA if len == 16 => {
                let mut o = [0u8; 16];
                o.copy_from_slice(data);
                let ip = IpAddr::V6(Ipv6Addr::from(o));
                addrs.push((owner, Address { ip, ttl }));
            }
            TYPE_CNAME => {
                let (target, _) = read_name(buf, start)?;
                cnames.push((owner, target));
            }
            _ => {}
        }
    }
    let mut names = vec![question.name.clone()];
    // Follow the chain (bounded by the records there are: a loop ends it).
    while names.len() <= cnames.len() {
        let last = &names[names.len() - 1];
        match cnames.iter().find(|(o, _)| o == last) {
            Some((_, t)) if !names.contains(t) => names.push(t.clone()),
            _ => break,
        }
    }
    let addresses = addrs
        .into_iter()
        .filter(|(owner, _)| names.contains(owner))
        .map(|(_, a)| a)
        .collect();
    Ok(Answer {
        question,
        rcode,
        names,
        addresses,
    })
}

/// The `REFUSED` answer to `query`: its header and question, no records.
pub fn refused(query: &[u8]) -> Result<Vec<u8>, MessageError> {
    let (r, _, _) = header_and_question(query)?;
    let mut out = query[..r.at].to_vec();
    // QR = 1, opcode and RD kept, AA/TC = 0; RA = 1, RCODE = REFUSED.
    out[2] = 0x80 | (query[2] & 0x79);
    out[3] = 0x80 | RCODE_REFUSED;
    // One question, no answer, authority or additional records.
    out[4..12].copy_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    Ok(out)
}

/// Encoding, for tests and the tools' test resolver.
pub mod build {
    use super::*;

    fn name(out: &mut Vec<u8>, name: &str) {
        for label in name.split('.').filter(|l| !l.is_empty()) {
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
        out.push(0);
    }

    /// A query for `qname` of type `qtype`, recursion desired.
    pub fn query(id: u16, qname: &str, qtype: u16) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + qname.len() + 6);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        name(&mut out, qname);
        out.extend_from_slice(&qtype.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes());
        out
    }

    /// The answer to `query` with `records` (owner, TTL, address or alias), code `rcode`.
    pub fn answer(query: &[u8], rcode: u8, records: &[(&str, u32, Record)]) -> Vec<u8> {
        let Ok((r, _, _)) = header_and_question(query) else {
            return Vec::new();
        };
        let mut out = query[..r.at].to_vec();
        out[2] = 0x80 | (query[2] & 0x79);
        out[3] = 0x80 | (rcode & 0x0f);
        out[4..12].copy_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
        out[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
        for (owner, ttl, rec) in records {
            name(&mut out, owner);
            let (rtype, data) = match rec {
                Record::Ip(IpAddr::V4(v4)) => (TYPE_A, v4.octets().to_vec()),
                Record::Ip(IpAddr::V6(v6)) => (TYPE_AAAA, v6.octets().to_vec()),
                Record::Alias(target) => {
                    let mut d = Vec::new();
                    name(&mut d, target);
                    (TYPE_CNAME, d)
                }
            };
            out.extend_from_slice(&rtype.to_be_bytes());
            out.extend_from_slice(&1u16.to_be_bytes());
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&(data.len() as u16).to_be_bytes());
            out.extend_from_slice(&data);
        }
        out
    }

    /// The data of an answer record.
    #[derive(Debug, Clone)]
    pub enum Record {
        Ip(IpAddr),
        Alias(String),
    }
}

#[cfg(test)]
mod tests {
    use super::build::Record;
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn a_query_reads_back_lower_case() {
        let q = build::query(7, "A.Allowed.Test.", TYPE_A);
        assert_eq!(
            question(&q),
            Ok(Question {
                id: 7,
                name: "a.allowed.test".into(),
                qtype: TYPE_A
            })
        );
    }

    #[test]
    fn answers_give_the_alias_chain_and_its_addresses_only() {
        let q = build::query(9, "www.shop.test", TYPE_A);
        let a = build::answer(
            &q,
            0,
            &[
                ("www.shop.test", 300, Record::Alias("edge.cdn.test".into())),
                ("edge.cdn.test", 60, Record::Ip(ip("192.0.2.10"))),
                ("edge.cdn.test", 30, Record::Ip(ip("2001:db8::10"))),
                // Not the question's: ignored.
                ("evil.test", 60, Record::Ip(ip("192.0.2.66"))),
            ],
        );
        let got = answer(&a).expect("parses");
        assert_eq!(got.rcode, 0);
        assert_eq!(got.names, vec!["www.shop.test", "edge.cdn.test"]);
        assert_eq!(
            got.addresses,
            vec![
                Address {
                    ip: ip("192.0.2.10"),
                    ttl: 60
                },
                Address {
                    ip: ip("2001:db8::10"),
                    ttl: 30
                }
            ]
        );
    }

    #[test]
    fn compressed_names_are_followed_and_loops_refused() {
        let q = build::query(1, "a.test", TYPE_A);
        let mut a = build::answer(&q, 0, &[]);
        // One A record whose owner points at the question's name (offset 12).
        a[6..8].copy_from_slice(&1u16.to_be_bytes());
        a.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 0, 0, 1]);
        let got = answer(&a).expect("parses");
        assert_eq!(got.addresses[0].ip, ip("10.0.0.1"));
        // A pointer to itself.
        let mut bad = build::query(1, "a.test", TYPE_A);
        bad.truncate(HEADER);
        bad.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert_eq!(question(&bad), Err(MessageError::BadName(12)));
    }

    #[test]
    fn refused_keeps_id_and_question() {
        let q = build::query(0xbeef, "b.denied.test", TYPE_AAAA);
        let r = refused(&q).expect("a valid query");
        let got = answer(&r).expect("parses");
        assert_eq!(got.rcode, RCODE_REFUSED);
        assert_eq!(got.question.id, 0xbeef);
        assert_eq!(got.question.name, "b.denied.test");
        assert!(got.addresses.is_empty());
        assert_eq!(r[2] & 0x80, 0x80, "a response");
    }

    #[test]
    fn truncated_input_is_an_error_at_every_length() {
        let q = build::query(3, "x.allowed.test", TYPE_A);
        let a = build::answer(&q, 0, &[("x.allowed.test", 5, Record::Ip(ip("10.1.2.3")))]);
        for n in 0..a.len() {
            assert!(answer(&a[..n]).is_err(), "{n} bytes");
        }
        assert!(answer(&a).is_ok());
    }
}
