//! JSON comparison that matches how Kratos stores values: numbers compare by value (`1` equals
//! `1.0`), objects by content regardless of key order. Used to decide whether a write is due, so
//! that representation differences never cause endless updates.

use serde_json::Value;

/// Whether two JSON values mean the same thing.
pub fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(i), Some(j), _, _) => i == j,
                (_, _, Some(i), Some(j)) => i == j,
                _ => match (x.as_f64(), y.as_f64()) {
                    (Some(f), Some(g)) => f == g,
                    _ => false,
                },
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| equal(v, w)))
        }
        _ => a == b,
    }
}

/// Like [`equal`] for optional values, where absent and `null` are the same.
pub fn equal_opt(a: Option<&Value>, b: Option<&Value>) -> bool {
    let a = a.filter(|v| !v.is_null());
    let b = b.filter(|v| !v.is_null());
    match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => equal(x, y),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_compare_by_value() {
        assert!(equal(&json!(1), &json!(1.0)));
        assert!(equal(&json!({"a": [1, 2.5]}), &json!({"a": [1.0, 2.5]})));
        assert!(!equal(&json!(1), &json!(2)));
        assert!(!equal(&json!(1), &json!("1")));
        assert!(equal(&json!(u64::MAX), &json!(u64::MAX)));
        assert!(!equal(&json!(-1), &json!(u64::MAX)));
    }

    #[test]
    fn key_order_does_not_matter_but_content_does() {
        let a: Value = serde_json::from_str(r#"{"a":1,"b":{"c":true}}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"b":{"c":true},"a":1}"#).unwrap();
        assert!(equal(&a, &b));
        assert!(!equal(&a, &json!({"a": 1})));
        assert!(!equal(&json!({"a": 1}), &json!({"b": 1})));
        assert!(!equal(&json!([1, 2]), &json!([2, 1])));
    }

    #[test]
    fn null_and_absent_are_equal_for_optional_values() {
        assert!(equal_opt(None, Some(&Value::Null)));
        assert!(equal_opt(Some(&Value::Null), None));
        assert!(!equal_opt(Some(&json!({})), None));
        assert!(equal_opt(Some(&json!({"x": 1})), Some(&json!({"x": 1.0}))));
    }
}
