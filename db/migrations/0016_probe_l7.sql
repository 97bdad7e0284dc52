-- L7 probes of `weft connectivity test`: an HTTP request instead of the echo line, and a
-- DNS lookup before connecting (what rules.http, rules.dns and toFQDNs are about), with
-- what came back. NULL: the plain echo probe, or no answer of that kind.
ALTER TABLE probes
    ADD COLUMN http_method  text,
    ADD COLUMN http_path    text,
    ADD COLUMN resolve_name text,
    ADD COLUMN resolver     inet,
    ADD COLUMN http_status  integer CHECK (http_status BETWEEN 100 AND 999),
    ADD COLUMN dns_rcode    text,
    ADD CONSTRAINT probes_http_pair CHECK ((http_method IS NULL) = (http_path IS NULL)),
    ADD CONSTRAINT probes_resolve_pair CHECK ((resolve_name IS NULL) = (resolver IS NULL));
