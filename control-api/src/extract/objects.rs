//! A JSON document read so that a struct is only ever an object.
//!
//! serde's derived structs also accept a sequence of their fields in order, so `"routing": []`
//! (every field defaulted) or `["web"]` for `{"name": "web"}` would be accepted although the
//! spec says object. [`Objects`] wraps a [`Value`] and refuses a sequence wherever a struct
//! is read, at any depth it can see. What serde buffers first (internally tagged or untagged
//! enums, `flatten`) is read by serde's own buffer, beyond this wrapper's reach.

use serde::de::{self, DeserializeSeed, IntoDeserializer, Unexpected, Visitor};
use serde_json::{Map, Value};

/// A [`Value`] whose structs (at every depth) must be objects.
pub struct Objects(pub Value);

type Error = serde_json::Error;

/// Methods passed to the `Value` as they are.
macro_rules! scalars {
    ($($method:ident)+) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                self.0.$method(visitor)
            }
        )+
    };
}

impl<'de> de::Deserializer<'de> for Objects {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Array(items) => visitor.visit_seq(Items(items.into_iter())),
            Value::Object(fields) => visitor.visit_map(Fields::new(fields)),
            scalar => de::Deserializer::deserialize_any(scalar, visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(f) => visitor.visit_map(Fields::new(f)),
            Value::Array(_) => Err(de::Error::invalid_type(Unexpected::Seq, &visitor)),
            other => other.deserialize_struct(name, fields, visitor),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Object(f) => visitor.visit_map(Fields::new(f)),
            other => other.deserialize_map(visitor),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Array(items) => visitor.visit_seq(Items(items.into_iter())),
            other => other.deserialize_seq(visitor),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            other => visitor.visit_some(Objects(other)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        // Enums keep serde_json's own reading (a string, or an object of one key).
        self.0.deserialize_enum(name, variants, visitor)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.0.deserialize_unit_struct(name, visitor)
    }

    // Scalars keep serde_json's own type checks (a map is not read from `null`, say).
    scalars! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64
        deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char deserialize_str
        deserialize_string deserialize_bytes deserialize_byte_buf deserialize_unit
        deserialize_identifier deserialize_ignored_any
    }
}

struct Items(std::vec::IntoIter<Value>);

impl<'de> de::SeqAccess<'de> for Items {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        self.0
            .next()
            .map(|v| seed.deserialize(Objects(v)))
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Fields {
    iter: serde_json::map::IntoIter,
    value: Option<Value>,
}

impl Fields {
    fn new(fields: Map<String, Value>) -> Self {
        Fields {
            iter: fields.into_iter(),
            value: None,
        }
    }
}

impl<'de> de::MapAccess<'de> for Fields {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((key, value)) = self.iter.next() else {
            return Ok(None);
        };
        self.value = Some(value);
        // Keys are read as strings: no request type has keys of another type.
        seed.deserialize(key.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let value = self
            .value
            .take()
            .ok_or_else(|| de::Error::custom("a map value was asked for before its key"))?;
        seed.deserialize(Objects(value))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::Objects;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Routing {
        #[serde(default)]
        mode: Option<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Cluster {
        name: String,
        #[serde(default)]
        routing: Routing,
        #[serde(default)]
        tags: Vec<Routing>,
        #[serde(default)]
        parent: Option<Box<Cluster>>,
    }

    fn read(v: serde_json::Value) -> Result<Cluster, String> {
        Cluster::deserialize(Objects(v)).map_err(|e| e.to_string())
    }

    #[test]
    fn plain_serde_accepts_a_sequence_for_a_struct() {
        // Why the wrapper exists: without it both of these are read as structs.
        assert!(serde_json::from_value::<Cluster>(json!(["web"])).is_ok());
        assert!(serde_json::from_value::<Cluster>(json!({"name": "a", "routing": []})).is_ok());
    }

    #[test]
    fn a_sequence_where_a_struct_is_meant_is_refused_at_any_depth() {
        for doc in [
            json!(["web"]),
            json!([]),
            json!({"name": "a", "routing": []}),
            json!({"name": "a", "tags": [[]]}),
            json!({"name": "a", "parent": ["b"]}),
        ] {
            let err = read(doc.clone()).expect_err(&doc.to_string());
            assert!(err.contains("invalid type: sequence"), "{doc}: {err}");
        }
    }

    #[test]
    fn objects_read_as_before() {
        let doc = json!({
            "name": "a",
            "routing": {"mode": "native"},
            "tags": [{}, {"mode": null}],
            "parent": {"name": "b"}
        });
        assert_eq!(
            read(doc.clone()).unwrap(),
            serde_json::from_value(doc).unwrap()
        );
        let unknown = read(json!({"name": "a", "routing": {"mod": "x"}})).unwrap_err();
        // What is not an object is no map either (serde_json's map reads `null` as empty
        // only when asked for anything).
        for doc in [json!(null), json!([]), json!("x")] {
            let map = serde_json::Map::<String, serde_json::Value>::deserialize(Objects(doc));
            assert!(map.is_err(), "{map:?}");
        }
        assert!(Routing::deserialize(Objects(json!(null))).is_err());
        assert!(unknown.contains("unknown field `mod`"), "{unknown}");
    }
}
