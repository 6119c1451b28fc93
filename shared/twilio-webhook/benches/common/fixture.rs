//! The inbound-SMS request shared by the signature bench and the `floor_ratio` example:
//! `scripts/bench/fixtures/sms-request.json`, also read by the twilio-python and twilio-node peers.

use serde_json::Value;

const FIXTURE: &str = include_str!("../../../../scripts/bench/fixtures/sms-request.json");

pub struct Fixture {
    pub auth_token: String,
    pub url: String,
    pub params: Vec<(String, String)>,
    pub valid_signature: String,
    pub invalid_signature: String,
}

impl Fixture {
    pub fn load() -> Self {
        let v: Value = serde_json::from_str(FIXTURE).expect("fixture is JSON");
        let text = |key: &str| {
            v[key]
                .as_str()
                .unwrap_or_else(|| panic!("fixture: {key} is not a string"))
                .to_owned()
        };
        let params = v["params"]
            .as_array()
            .expect("fixture: params is an array")
            .iter()
            .map(|pair| match pair.as_array().map(Vec::as_slice) {
                Some([Value::String(k), Value::String(v)]) => (k.clone(), v.clone()),
                _ => panic!("fixture: each param is a [key, value] pair of strings"),
            })
            .collect();
        Self {
            auth_token: text("auth_token"),
            url: text("url"),
            params,
            valid_signature: text("valid_signature"),
            invalid_signature: text("invalid_signature"),
        }
    }

    /// The string Twilio signs for a form POST: URL, then `key + value` sorted by key (the
    /// fixture has no repeated keys, so sorting the pairs is the same thing).
    pub fn signed_string(&self) -> Vec<u8> {
        let mut pairs: Vec<(&str, &str)> = self
            .params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        pairs.sort_unstable();
        let mut s = self.url.clone().into_bytes();
        for (k, v) in pairs {
            s.extend_from_slice(k.as_bytes());
            s.extend_from_slice(v.as_bytes());
        }
        s
    }
}
