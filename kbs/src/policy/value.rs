//! Serializes Rust values straight into the policy engine's value form.
//!
//! The release path turns the normalized claims into a Rego input once per
//! release. Going through JSON text (regorus' reader interns every key
//! through a hash table) or through `serde_json::Value` costs two or three
//! times what building the values directly does. The result is the same
//! document `serde_json` would produce: structs and maps become objects,
//! sequences arrays, unit enum variants strings, `None` null.

use std::collections::BTreeMap;
use std::fmt::Display;

use regorus::Value;
use serde::Serialize;
use serde::ser::{self, Impossible};

/// Why a value has no JSON form.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ToValueError(String);

impl ser::Error for ToValueError {
    fn custom<T: Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

/// `value` as a regorus value.
pub fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<Value, ToValueError> {
    value.serialize(Serializer)
}

struct Serializer;

fn unsupported(what: &str) -> ToValueError {
    ToValueError(format!("{what} has no JSON form here"))
}

impl ser::Serializer for Serializer {
    type Ok = Value;
    type Error = ToValueError;
    type SerializeSeq = Seq;
    type SerializeTuple = Seq;
    type SerializeTupleStruct = Seq;
    type SerializeTupleVariant = Impossible<Value, ToValueError>;
    type SerializeMap = Map;
    type SerializeStruct = Map;
    type SerializeStructVariant = Impossible<Value, ToValueError>;

    fn serialize_bool(self, v: bool) -> Result<Value, ToValueError> {
        Ok(Value::from(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value, ToValueError> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<Value, ToValueError> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<Value, ToValueError> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<Value, ToValueError> {
        // Non-negative integers as unsigned, as serde_json reads them.
        Ok(u64::try_from(v).map_or_else(|_| Value::from(v), Value::from))
    }
    fn serialize_u8(self, v: u8) -> Result<Value, ToValueError> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<Value, ToValueError> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<Value, ToValueError> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<Value, ToValueError> {
        Ok(Value::from(v))
    }
    fn serialize_f32(self, v: f32) -> Result<Value, ToValueError> {
        self.serialize_f64(f64::from(v))
    }
    fn serialize_f64(self, v: f64) -> Result<Value, ToValueError> {
        // JSON has no NaN or infinities; serde_json writes them as null.
        Ok(if v.is_finite() { Value::from(v) } else { Value::Null })
    }
    fn serialize_char(self, v: char) -> Result<Value, ToValueError> {
        Ok(Value::from(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Value, ToValueError> {
        Ok(Value::from(v))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Value, ToValueError> {
        Ok(Value::from(v.iter().map(|b| Value::from(u64::from(*b))).collect::<Vec<_>>()))
    }
    fn serialize_none(self) -> Result<Value, ToValueError> {
        Ok(Value::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Value, ToValueError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, ToValueError> {
        Ok(Value::Null)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<Value, ToValueError> {
        Ok(Value::Null)
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<Value, ToValueError> {
        Ok(Value::from(variant))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<Value, ToValueError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Value, ToValueError> {
        Ok(Value::from(BTreeMap::from([(Value::from(variant), value.serialize(self)?)])))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Seq, ToValueError> {
        Ok(Seq(Vec::with_capacity(len.unwrap_or(0))))
    }
    fn serialize_tuple(self, len: usize) -> Result<Seq, ToValueError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _: &'static str, len: usize) -> Result<Seq, ToValueError> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, ToValueError> {
        Err(unsupported("a tuple variant"))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Map, ToValueError> {
        Ok(Map { entries: BTreeMap::new(), key: None })
    }
    fn serialize_struct(self, _: &'static str, _len: usize) -> Result<Map, ToValueError> {
        self.serialize_map(None)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, ToValueError> {
        Err(unsupported("a struct variant"))
    }
}

struct Seq(Vec<Value>);

impl ser::SerializeSeq for Seq {
    type Ok = Value;
    type Error = ToValueError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ToValueError> {
        self.0.push(value.serialize(Serializer)?);
        Ok(())
    }
    fn end(self) -> Result<Value, ToValueError> {
        Ok(Value::from(self.0))
    }
}

impl ser::SerializeTuple for Seq {
    type Ok = Value;
    type Error = ToValueError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ToValueError> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<Value, ToValueError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for Seq {
    type Ok = Value;
    type Error = ToValueError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ToValueError> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<Value, ToValueError> {
        ser::SerializeSeq::end(self)
    }
}

struct Map {
    entries: BTreeMap<Value, Value>,
    key: Option<Value>,
}

impl ser::SerializeMap for Map {
    type Ok = Value;
    type Error = ToValueError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), ToValueError> {
        let key = key.serialize(Serializer)?;
        if key.as_string().is_err() {
            return Err(unsupported("a map key that is not a string"));
        }
        self.key = Some(key);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), ToValueError> {
        let key = self.key.take().ok_or_else(|| unsupported("a map value without a key"))?;
        self.entries.insert(key, value.serialize(Serializer)?);
        Ok(())
    }
    fn end(self) -> Result<Value, ToValueError> {
        Ok(Value::from(self.entries))
    }
}

impl ser::SerializeStruct for Map {
    type Ok = Value;
    type Error = ToValueError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), ToValueError> {
        self.entries.insert(Value::from(key), value.serialize(Serializer)?);
        Ok(())
    }
    fn end(self) -> Result<Value, ToValueError> {
        Ok(Value::from(self.entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same document as serde_json's, read back by regorus.
    fn same_as_json<T: Serialize>(value: &T) {
        let direct = to_value(value).unwrap();
        let via_json = Value::from_json_str(&serde_json::to_string(value).unwrap()).unwrap();
        assert_eq!(direct, via_json, "{}", serde_json::to_string(value).unwrap());
    }

    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        Snp,
        #[allow(dead_code)]
        Tdx,
    }

    #[derive(Serialize)]
    struct Inner {
        n: u8,
        neg: i32,
        big: u64,
        f: f64,
        list: Vec<u16>,
        map: BTreeMap<String, String>,
        opt: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        skipped: Option<u8>,
        kind: Kind,
        tuple: (u8, bool),
        c: char,
    }

    #[test]
    fn matches_serde_json() {
        let inner = Inner {
            n: 7,
            neg: -3,
            big: u64::MAX,
            f: 1.5,
            list: vec![1, 2, 3],
            map: BTreeMap::from([("a".into(), "b".into()), ("c".into(), "".into())]),
            opt: None,
            skipped: None,
            kind: Kind::Snp,
            tuple: (1, true),
            c: 'x',
        };
        same_as_json(&inner);
        same_as_json(&vec![inner]);
        same_as_json(&serde_json::json!({"nested": {"deep": [1, -1, "s", null, true]}}));
    }

    #[test]
    fn claims_match_serde_json() {
        let claims = crate::policy::tests::sample_claims(false, 0, &"ab".repeat(48));
        same_as_json(&claims);
    }

    #[test]
    fn non_string_keys_are_refused() {
        let map = BTreeMap::from([(1u8, 2u8)]);
        assert!(to_value(&map).is_err());
    }
}
