//! What staff send, from either front end (JSON or an HTML form), checked into typed requests.
//! Every refusal names the field; nothing is stored before a request passes.

use crate::problem::Problem;
use crate::store::Resolution;
use ledger_core::{AMOUNT_MAX, AccountId, Amount, Currency};
use serde_json::{Map, Value};

/// Longest reason kept.
pub const REASON_LEN_MAX: usize = 2_000;

/// A proposal's fields as strings (a form) or JSON values converted (the API).
#[derive(Debug, Clone, Default)]
pub struct ProposalFields {
    /// `reverse`, `adjust`, `accept` or `define`.
    pub action: Option<String>,
    /// For reverse.
    pub event_id: Option<String>,
    /// For adjust.
    pub from: Option<String>,
    /// For adjust.
    pub to: Option<String>,
    /// For adjust: minor units.
    pub amount: Option<i64>,
    /// For adjust and define.
    pub currency: Option<String>,
    /// For define.
    pub allow_negative: Option<bool>,
    /// Always.
    pub reason: Option<String>,
}

/// Reads a JSON object body, refusing anything else and unknown fields.
pub fn json_object(body: &[u8], allowed: &[&str]) -> Result<Map<String, Value>, Problem> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| Problem::invalid(format!("the body is not JSON: {e}")))?;
    let Value::Object(map) = value else { return Err(Problem::invalid("the body must be a JSON object")) };
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(Problem::invalid(format!("unknown field {unknown:?}")));
    }
    Ok(map)
}

fn string(map: &Map<String, Value>, name: &str) -> Result<Option<String>, Problem> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Problem::invalid(format!("{name} must be a string"))),
    }
}

/// The proposal fields of a JSON body.
pub fn proposal_from_json(body: &[u8]) -> Result<ProposalFields, Problem> {
    let map =
        json_object(body, &["action", "event_id", "from", "to", "amount", "currency", "allow_negative", "reason"])?;
    let amount = match map.get("amount") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.as_i64().ok_or_else(|| {
            Problem::invalid(format!("amount must be an integer of minor units from 1 to {AMOUNT_MAX}, got {n}"))
        })?),
        Some(_) => return Err(Problem::invalid("amount must be a JSON integer of minor units")),
    };
    let allow_negative = match map.get("allow_negative") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(Problem::invalid("allow_negative must be true or false")),
    };
    Ok(ProposalFields {
        action: string(&map, "action")?,
        event_id: string(&map, "event_id")?,
        from: string(&map, "from")?,
        to: string(&map, "to")?,
        amount,
        currency: string(&map, "currency")?,
        allow_negative,
        reason: string(&map, "reason")?,
    })
}

/// The proposal fields of a form (empty fields are absent).
pub fn proposal_from_form(form: &std::collections::HashMap<String, String>) -> Result<ProposalFields, Problem> {
    let get = |k: &str| form.get(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let amount = get("amount")
        .map(|a| {
            if a.bytes().all(|b| b.is_ascii_digit()) && a.len() <= 19 {
                a.parse::<i64>().map_err(|_| Problem::invalid(format!("amount {a:?} is too large")))
            } else {
                Err(Problem::invalid(format!("amount must be a whole number of minor units, got {a:?}")))
            }
        })
        .transpose()?;
    let allow_negative = match get("allow_negative").as_deref() {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => return Err(Problem::invalid(format!("allow_negative must be true or false, got {other:?}"))),
    };
    Ok(ProposalFields {
        action: get("action"),
        event_id: get("event_id"),
        from: get("from"),
        to: get("to"),
        amount,
        currency: get("currency"),
        allow_negative,
        reason: get("reason"),
    })
}

/// A written reason: required, not blank, bounded.
pub fn reason(reason: Option<&str>) -> Result<String, Problem> {
    let r = reason.map(str::trim).unwrap_or("");
    if r.is_empty() {
        return Err(Problem::invalid("a reason is required"));
    }
    if r.chars().count() > REASON_LEN_MAX {
        return Err(Problem::invalid(format!("a reason has at most {REASON_LEN_MAX} characters")));
    }
    Ok(r.to_owned())
}

fn required<T>(v: Option<T>, name: &str, action: &str) -> Result<T, Problem> {
    v.ok_or_else(|| Problem::invalid(format!("{action} needs {name}")))
}

/// Checks the fields into a resolution and its reason; fields that do not belong to the action are
/// refused rather than ignored.
pub fn proposal(f: &ProposalFields) -> Result<(Resolution, String), Problem> {
    let action =
        f.action.as_deref().ok_or_else(|| Problem::invalid("action is required: reverse, adjust, accept or define"))?;
    let present: Vec<&str> = [
        ("event_id", f.event_id.is_some()),
        ("from", f.from.is_some()),
        ("to", f.to.is_some()),
        ("amount", f.amount.is_some()),
        ("currency", f.currency.is_some()),
        ("allow_negative", f.allow_negative.is_some()),
    ]
    .into_iter()
    .filter_map(|(n, p)| p.then_some(n))
    .collect();
    let allowed: &[&str] = match action {
        "reverse" => &["event_id"],
        "adjust" => &["from", "to", "amount", "currency"],
        "accept" => &[],
        "define" => &["currency", "allow_negative"],
        other => return Err(Problem::invalid(format!("unknown action {other:?}: reverse, adjust, accept or define"))),
    };
    if let Some(extra) = present.iter().find(|p| !allowed.contains(p)) {
        return Err(Problem::invalid(format!("{action} takes no {extra}")));
    }
    let reason = reason(f.reason.as_deref())?;
    let currency = |c: Option<&String>| -> Result<String, Problem> {
        let c = required(c, "currency", action)?;
        Currency::new(c).map(|c| c.to_string()).map_err(|e| Problem::invalid(format!("currency: {e}")))
    };
    let resolution = match action {
        "reverse" => {
            let id = required(f.event_id.as_deref(), "event_id", action)?;
            Resolution::Reverse {
                event_id: id.parse().map_err(|_| Problem::invalid(format!("event_id {id:?} is not a UUID")))?,
            }
        }
        "adjust" => {
            let from = required(f.from.as_deref(), "from", action)?;
            let to = required(f.to.as_deref(), "to", action)?;
            for id in [from, to] {
                AccountId::new(id).map_err(|e| Problem::invalid(format!("account {id:?}: {e}")))?;
            }
            if from == to {
                return Err(Problem::invalid("from and to must be different accounts"));
            }
            let amount = required(f.amount, "amount", action)?;
            Amount::new(amount).map_err(|e| Problem::invalid(format!("amount: {e}")))?;
            Resolution::Adjust {
                from: from.to_owned(),
                to: to.to_owned(),
                amount,
                currency: currency(f.currency.as_ref())?,
            }
        }
        "accept" => Resolution::Accept,
        _ => Resolution::Define {
            currency: currency(f.currency.as_ref())?,
            allow_negative: required(f.allow_negative, "allow_negative", action)?,
        },
    };
    Ok((resolution, reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str) -> Result<(Resolution, String), Problem> {
        proposal(&proposal_from_json(json.as_bytes())?)
    }

    #[test]
    fn every_action_checks_its_fields() {
        assert!(matches!(fields(r#"{"action":"accept","reason":"fine"}"#), Ok((Resolution::Accept, _))));
        assert!(fields(r#"{"action":"accept","reason":"  "}"#).is_err(), "blank reason");
        assert!(fields(r#"{"action":"accept"}"#).is_err(), "no reason");
        assert!(fields(r#"{"action":"accept","reason":"x","amount":5}"#).is_err(), "a field of another action");
        assert!(fields(r#"{"action":"reverse","event_id":"nope","reason":"x"}"#).is_err());
        assert!(fields(r#"{"action":"adjust","from":"a","to":"a","amount":5,"currency":"USD","reason":"x"}"#).is_err());
        assert!(fields(r#"{"action":"adjust","from":"a","to":"b","amount":0,"currency":"USD","reason":"x"}"#).is_err());
        assert!(
            fields(
                r#"{"action":"adjust","from":"a","to":"b","amount":1000000000000001,"currency":"USD","reason":"x"}"#
            )
            .is_err()
        );
        assert!(
            fields(
                r#"{"action":"adjust","from":"a","to":"b","amount":1000000000000000,"currency":"USD","reason":"x"}"#
            )
            .is_ok()
        );
        assert!(
            fields(r#"{"action":"adjust","from":"a","to":"b","amount":"5","currency":"USD","reason":"x"}"#).is_err()
        );
        assert!(
            fields(r#"{"action":"adjust","from":"a","to":"b","amount":5.5,"currency":"USD","reason":"x"}"#).is_err()
        );
        assert!(
            fields(r#"{"action":"adjust","from":"a","to":"b","amount":5,"currency":"usd!","reason":"x"}"#).is_err()
        );
        assert!(fields(r#"{"action":"define","currency":"EUR","reason":"x"}"#).is_err(), "allow_negative missing");
        assert!(fields(r#"{"action":"burn","reason":"x"}"#).is_err());
        assert!(fields(r#"{"action":"accept","reason":"x","extra":1}"#).is_err(), "unknown field");
        assert!(fields(r#"[1]"#).is_err());
        let long = "x".repeat(REASON_LEN_MAX + 1);
        assert!(fields(&format!(r#"{{"action":"accept","reason":"{long}"}}"#)).is_err());
    }

    #[test]
    fn forms_parse_amounts_strictly() {
        let form = |amount: &str| {
            let m: std::collections::HashMap<String, String> = [
                ("action", "adjust"),
                ("from", "a"),
                ("to", "b"),
                ("amount", amount),
                ("currency", "USD"),
                ("reason", "r"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
            proposal_from_form(&m).and_then(|f| proposal(&f))
        };
        assert!(form("100").is_ok());
        for bad in ["-5", "1e3", "10.5", "99999999999999999999", "0x10"] {
            assert!(form(bad).is_err(), "{bad}");
        }
    }
}
