//! An assessment's record: what `POST /internal/assess` answers, sealed, for the payment
//! service to publish as `payment.screened` in the unit of work that writes the payment; and
//! what the event handler opens and keeps (`components/FRAUD.md`, "How an assessment is kept").
//!
//! The seal is HMAC-SHA256 (RFC 2104) of the record's JSON text under `fraud_settings.record_key`,
//! which only this service's database holds: the payment service carries the record but can
//! neither alter it nor make one up, and no other service may publish on its topic.

use micropay_sdk::contracts::{Recommendation, RiskLevel, SealedAssessment};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::features::Features;

/// An assessment as `fraud_assessments` (and, when it warrants one, `fraud_alerts`) keep it.
/// (Unknown fields are let through: the seal vouches for the text, and a record sealed by the
/// version before a hot swap is opened by the one after it.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub assessment_id: String,
    pub payment_id: String,
    /// The payer.
    pub user_id: String,
    pub payer_account_id: String,
    pub payee_account_id: String,
    /// Decimal text, as the payment names it.
    pub amount: String,
    pub currency: String,
    /// 0 to 100, two decimal places.
    pub risk_score: String,
    pub risk_level: RiskLevel,
    pub recommendation: Recommendation,
    /// Every rule that fired or failed, with its version, mode and score.
    pub risk_factors: Json,
    pub model_version: String,
    /// The rule versions evaluated, for `fraud_models`: only while the model is not among the
    /// most recent kept there (the first assessments of a new model), none once it is, so that
    /// a record stays small (a fifth of its size with 20 rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules_evaluated: Option<Json>,
    pub features: Features,
    /// When it was assessed, in microseconds since the Unix epoch (UTC).
    pub assessed_at: i64,
    /// The alert it opens (`HIGH_RISK`, `REVIEW_REQUIRED`), if any, and its description.
    pub alert_type: Option<String>,
    pub alert_description: Option<String>,
}

/// Why a published record is not kept.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its seal is not this service's seal of its text.
    Seal,
    /// Sealed, but not a record (a seal of another version's shape, say).
    Shape(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Seal => f.write_str("its seal does not verify"),
            Refused::Shape(err) => write!(f, "it is not a record: {err}"),
        }
    }
}

impl Record {
    /// The record as its text and that text's seal under `key`.
    pub fn seal(&self, key: &str) -> SealedAssessment {
        let record = serde_json::to_string(self).expect("a record serialises");
        let seal = hex::encode(hmac_sha256(key.as_bytes(), record.as_bytes()));
        SealedAssessment { record, seal }
    }

    /// The record of `sealed`, when its seal is this service's under `key`.
    pub fn open(sealed: &SealedAssessment, key: &str) -> Result<Record, Refused> {
        let expected = hmac_sha256(key.as_bytes(), sealed.record.as_bytes());
        let given = hex::decode(&sealed.seal).map_err(|_| Refused::Seal)?;
        // Compared in time independent of where they differ.
        let differs = given.len() != expected.len()
            || given.iter().zip(expected.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0;
        if differs {
            return Err(Refused::Seal);
        }
        serde_json::from_str(&sealed.record).map_err(|err| Refused::Shape(err.to_string()))
    }
}

/// HMAC-SHA256 (RFC 2104, SHA-256's block of 64 bytes).
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner = Sha256::new().chain_update(block.map(|byte| byte ^ 0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(block.map(|byte| byte ^ 0x5c)).chain_update(inner).finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use micropay_sdk::money::Decimal;

    #[test]
    fn hmac_is_rfc_4231s() {
        // RFC 4231, test cases 2 (a short key) and 6 (a key longer than the block).
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex::encode(hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    fn record() -> Record {
        let id = "5f0c2a51-3d5e-4b8e-9d64-0c1b1f6f3a10".to_string();
        Record {
            assessment_id: id.clone(),
            payment_id: id.clone(),
            user_id: id.clone(),
            payer_account_id: id.clone(),
            payee_account_id: id,
            amount: "10.0000".into(),
            currency: "USD".into(),
            risk_score: "0.00".into(),
            risk_level: RiskLevel::Low,
            recommendation: Recommendation::Approve,
            risk_factors: Json::Array(Vec::new()),
            model_version: "rules-0".into(),
            rules_evaluated: Some(Json::Array(Vec::new())),
            features: Features {
                amount: Decimal::TEN,
                currency: "USD".into(),
                hour_of_day: 3,
                amount_is_round: false,
                payer_account_age_hours: None,
                payee_account_age_hours: Some(1),
                payer_payments_last_hour: 0,
                payer_amount_last_hour: Decimal::ZERO,
                payer_payments_last_day: 0,
                payer_amount_last_day: Decimal::ZERO,
                payer_round_amounts_last_day: 0,
                first_payment_to_payee: true,
                payer_email_verified: false,
            },
            assessed_at: 1_700_000_000_000_000,
            alert_type: None,
            alert_description: None,
        }
    }

    #[test]
    fn a_sealed_record_opens_under_its_key_only() {
        let sealed = record().seal("key");
        assert_eq!(Record::open(&sealed, "key"), Ok(record()));
        assert_eq!(Record::open(&sealed, "another key"), Err(Refused::Seal));
        // A known model's record leaves its rule versions out, and opens without them.
        let known = Record { rules_evaluated: None, ..record() };
        let sealed = known.seal("key");
        assert!(!sealed.record.contains("rules_evaluated"), "{}", sealed.record);
        assert_eq!(Record::open(&sealed, "key"), Ok(known));
    }

    #[test]
    fn a_record_altered_or_made_up_by_its_carrier_is_refused() {
        let sealed = record().seal("key");
        // The score lowered, the decision changed: the text no longer matches its seal.
        let altered =
            SealedAssessment { record: sealed.record.replace("\"APPROVE\"", "\"DECLINE\""), seal: sealed.seal.clone() };
        assert_ne!(altered.record, sealed.record);
        assert_eq!(Record::open(&altered, "key"), Err(Refused::Seal));
        // A record of its own, sealed with a digest or a key guessed: refused.
        let made_up = SealedAssessment {
            record: sealed.record.clone(),
            seal: hex::encode(Sha256::digest(sealed.record.as_bytes())),
        };
        assert_eq!(Record::open(&made_up, "key"), Err(Refused::Seal));
        for seal in ["", "zz", &sealed.seal[..62]] {
            let cut = SealedAssessment { record: sealed.record.clone(), seal: seal.to_string() };
            assert_eq!(Record::open(&cut, "key"), Err(Refused::Seal), "{seal}");
        }
        // Sealed under the key but not a record: refused for its shape.
        let odd = "{\"payment_id\": 1}";
        let shaped = SealedAssessment { record: odd.into(), seal: hex::encode(hmac_sha256(b"key", odd.as_bytes())) };
        assert!(matches!(Record::open(&shaped, "key"), Err(Refused::Shape(_))));
    }
}
