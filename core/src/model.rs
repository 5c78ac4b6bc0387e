//! Document models (reducers) that turn a strand's canonical sequence into state.
//!
//! A model validates a local submission before it is written (a bad action is refused with a
//! clear error) and applies actions to state. An action that fails on the state it lands on
//! (for example `increment` on a string) is recorded as errored and has no effect; because every
//! reactor folds the same canonical sequence, every reactor records the same errors.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::types::DocumentType;

/// A reducer over JSON state.
pub trait DocumentModel: Send + Sync + fmt::Debug + 'static {
    /// The state of an empty document.
    fn initial_state(&self) -> Value;

    /// Checks an action before it is accepted locally (shape of the input, known type).
    fn validate(&self, action_type: &str, input: &Value) -> Result<()>;

    /// Applies an action. On `Err` the state must be left exactly as it was.
    fn apply(&self, state: &mut Value, action_type: &str, input: &Value) -> Result<(), String>;
}

/// The models known to a reactor, by document type.
#[derive(Clone, Debug)]
pub struct ModelRegistry {
    models: HashMap<String, Arc<dyn DocumentModel>>,
}

impl Default for ModelRegistry {
    fn default() -> Self {
        let mut models: HashMap<String, Arc<dyn DocumentModel>> = HashMap::new();
        models.insert(
            crate::types::DEFAULT_DOCUMENT_TYPE.to_owned(),
            Arc::new(JsonModel),
        );
        ModelRegistry { models }
    }
}

impl ModelRegistry {
    /// Registers a model for a document type, replacing any earlier one.
    pub fn register(&mut self, document_type: &str, model: Arc<dyn DocumentModel>) {
        self.models.insert(document_type.to_owned(), model);
    }

    /// The model for a document type.
    pub fn get(&self, document_type: &DocumentType) -> Result<&Arc<dyn DocumentModel>> {
        self.models.get(document_type.as_str()).ok_or_else(|| {
            let mut known: Vec<_> = self.models.keys().cloned().collect();
            known.sort();
            Error::invalid(format!(
                "unknown document type {:?}; this reactor knows {}",
                document_type.as_str(),
                known.join(", ")
            ))
        })
    }
}

/// The built-in JSON model: `set`, `remove`, `increment` and `push` on RFC 6901 JSON Pointer
/// paths.
///
/// | action | input | effect |
/// |---|---|---|
/// | `set` | `{path, value}` | sets the member or element; the parent must exist; `-` appends |
/// | `remove` | `{path}` | removes the member or element, which must exist |
/// | `increment` | `{path, by?}` | adds `by` (default 1) to a number; a missing member starts at 0 |
/// | `push` | `{path, value}` | appends to an array; a missing member becomes `[value]` |
#[derive(Debug, Default, Clone, Copy)]
pub struct JsonModel;

/// One step of a JSON Pointer.
fn parse_pointer(path: &str) -> Result<Vec<String>> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(Error::invalid(format!(
            "path {path:?} is not a JSON Pointer: it must be empty or start with '/'"
        )));
    };
    rest.split('/')
        .map(|token| {
            let mut out = String::with_capacity(token.len());
            let mut chars = token.chars();
            while let Some(c) = chars.next() {
                if c == '~' {
                    match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        other => {
                            return Err(Error::invalid(format!(
                                "path {path:?} has an invalid escape '~{}'; only ~0 and ~1 exist",
                                other.map(String::from).unwrap_or_default()
                            )));
                        }
                    }
                } else {
                    out.push(c);
                }
            }
            Ok(out)
        })
        .collect()
}

fn field<'a>(input: &'a Value, name: &str, action: &str) -> Result<&'a Value> {
    input
        .get(name)
        .ok_or_else(|| Error::invalid(format!("action {action:?} needs an input field {name:?}")))
}

fn path_of(input: &Value, action: &str) -> Result<Vec<String>> {
    let path = field(input, "path", action)?;
    let path = path.as_str().ok_or_else(|| {
        Error::invalid(format!(
            "action {action:?}: \"path\" must be a string, got {path}"
        ))
    })?;
    parse_pointer(path)
}

fn array_index(token: &str, len: usize, allow_end: bool) -> Result<usize, String> {
    if allow_end && token == "-" {
        return Ok(len);
    }
    let valid = !token.is_empty()
        && token.bytes().all(|b| b.is_ascii_digit())
        && (token == "0" || !token.starts_with('0'));
    let idx: usize = if valid {
        token
            .parse()
            .map_err(|_| format!("index {token} is too large"))?
    } else {
        return Err(format!("{token:?} is not an array index"));
    };
    let max = if allow_end {
        len
    } else {
        len.saturating_sub(1)
    };
    if idx > max || (!allow_end && len == 0) {
        return Err(format!(
            "index {idx} is out of bounds for an array of {len}"
        ));
    }
    Ok(idx)
}

/// Walks to the parent of the last token, which must exist.
fn parent_mut<'a>(state: &'a mut Value, tokens: &[String]) -> Result<&'a mut Value, String> {
    let mut cur = state;
    for (depth, t) in tokens[..tokens.len() - 1].iter().enumerate() {
        cur = match cur {
            Value::Object(map) => map.get_mut(t),
            Value::Array(arr) => {
                let len = arr.len();
                let i = array_index(t, len, false)?;
                arr.get_mut(i)
            }
            _ => None,
        }
        .ok_or_else(|| format!("/{} does not exist", tokens[..=depth].join("/")))?;
    }
    Ok(cur)
}

fn get_mut<'a>(state: &'a mut Value, tokens: &[String]) -> Option<&'a mut Value> {
    let mut cur = state;
    for t in tokens {
        cur = match cur {
            Value::Object(map) => map.get_mut(t)?,
            Value::Array(arr) => {
                let len = arr.len();
                let i = array_index(t, len, false).ok()?;
                arr.get_mut(i)?
            }
            _ => return None,
        };
    }
    Some(cur)
}

fn add_numbers(a: &Value, by: &Value) -> Result<Value, String> {
    if let (Some(x), Some(y)) = (a.as_i64(), by.as_i64())
        && let Some(sum) = x.checked_add(y)
    {
        return Ok(Value::from(sum));
    }
    match (a.as_f64(), by.as_f64()) {
        (Some(x), Some(y)) => serde_json::Number::from_f64(x + y)
            .map(Value::Number)
            .ok_or_else(|| "the sum is not a finite number".to_owned()),
        _ => Err(format!("cannot increment {a}: it is not a number")),
    }
}

impl DocumentModel for JsonModel {
    fn initial_state(&self) -> Value {
        Value::Object(Default::default())
    }

    fn validate(&self, action_type: &str, input: &Value) -> Result<()> {
        if !input.is_object() {
            return Err(Error::invalid(format!(
                "action {action_type:?}: input must be a JSON object, got {input}"
            )));
        }
        match action_type {
            "set" | "push" => {
                path_of(input, action_type)?;
                field(input, "value", action_type)?;
            }
            "remove" => {
                if path_of(input, action_type)?.is_empty() {
                    return Err(Error::invalid(
                        "action \"remove\": the document root cannot be removed",
                    ));
                }
            }
            "increment" => {
                if path_of(input, action_type)?.is_empty() {
                    return Err(Error::invalid(
                        "action \"increment\": the document root is not a number",
                    ));
                }
                if let Some(by) = input.get("by")
                    && !by.is_number()
                {
                    return Err(Error::invalid(format!(
                        "action \"increment\": \"by\" must be a number, got {by}"
                    )));
                }
            }
            other => {
                return Err(Error::invalid(format!(
                    "unknown action type {other:?} for the json model; use set, remove, increment or push"
                )));
            }
        }
        Ok(())
    }

    fn apply(&self, state: &mut Value, action_type: &str, input: &Value) -> Result<(), String> {
        // Remote operations were validated where they were created; a reactor running an
        // older model may still meet an unknown action, which then errors here.
        self.validate(action_type, input)
            .map_err(|e| e.message().to_owned())?;
        let tokens = path_of(input, action_type).map_err(|e| e.message().to_owned())?;
        match action_type {
            "set" => {
                let value = input.get("value").cloned().unwrap_or(Value::Null);
                let Some(last) = tokens.last() else {
                    *state = value;
                    return Ok(());
                };
                match parent_mut(state, &tokens)? {
                    Value::Object(map) => {
                        map.insert(last.clone(), value);
                    }
                    Value::Array(arr) => {
                        let i = array_index(last, arr.len(), true)?;
                        if i == arr.len() {
                            arr.push(value);
                        } else {
                            arr[i] = value;
                        }
                    }
                    other => return Err(format!("cannot set a member of {}", kind(other))),
                }
                Ok(())
            }
            "remove" => {
                let last = tokens.last().ok_or("the document root cannot be removed")?;
                match parent_mut(state, &tokens)? {
                    Value::Object(map) => map
                        .remove(last)
                        .map(|_| ())
                        .ok_or_else(|| format!("/{} does not exist", tokens.join("/"))),
                    Value::Array(arr) => {
                        let i = array_index(last, arr.len(), false)?;
                        arr.remove(i);
                        Ok(())
                    }
                    other => Err(format!("cannot remove a member of {}", kind(other))),
                }
            }
            "increment" => {
                let by = input.get("by").cloned().unwrap_or(Value::from(1));
                if let Some(target) = get_mut(state, &tokens) {
                    *target = add_numbers(target, &by)?;
                    return Ok(());
                }
                let last = tokens.last().ok_or("the document root is not a number")?;
                match parent_mut(state, &tokens)? {
                    Value::Object(map) => {
                        map.insert(last.clone(), add_numbers(&Value::from(0), &by)?);
                        Ok(())
                    }
                    other => Err(format!("cannot add a member to {}", kind(other))),
                }
            }
            "push" => {
                let value = input.get("value").cloned().unwrap_or(Value::Null);
                if let Some(target) = get_mut(state, &tokens) {
                    return match target {
                        Value::Array(arr) => {
                            arr.push(value);
                            Ok(())
                        }
                        other => Err(format!("cannot push onto {}", kind(other))),
                    };
                }
                let last = tokens.last().ok_or("the document root is not an array")?;
                match parent_mut(state, &tokens)? {
                    Value::Object(map) => {
                        map.insert(last.clone(), Value::Array(vec![value]));
                        Ok(())
                    }
                    other => Err(format!("cannot add a member to {}", kind(other))),
                }
            }
            other => Err(format!("unknown action type {other:?}")),
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(actions: &[(&str, Value)]) -> (Value, Vec<Option<String>>) {
        let m = JsonModel;
        let mut s = m.initial_state();
        let errs = actions
            .iter()
            .map(|(t, i)| m.apply(&mut s, t, i).err())
            .collect();
        (s, errs)
    }

    #[test]
    fn set_remove_increment_push() {
        let (s, errs) = run(&[
            ("set", json!({"path": "/a", "value": {"b": [1]}})),
            ("push", json!({"path": "/a/b", "value": 2})),
            ("set", json!({"path": "/a/b/-", "value": 3})),
            ("set", json!({"path": "/a/b/0", "value": 0})),
            ("increment", json!({"path": "/n"})),
            ("increment", json!({"path": "/n", "by": 41})),
            ("increment", json!({"path": "/f", "by": 0.5})),
            ("push", json!({"path": "/list", "value": "x"})),
            ("set", json!({"path": "/x~1y", "value": true})),
            ("remove", json!({"path": "/a/b/1"})),
        ]);
        assert!(errs.iter().all(Option::is_none), "{errs:?}");
        assert_eq!(
            s,
            json!({"a": {"b": [0, 3]}, "n": 42, "f": 0.5, "list": ["x"], "x/y": true})
        );
    }

    #[test]
    fn failing_actions_error_without_effect() {
        let (s, errs) = run(&[
            ("set", json!({"path": "/s", "value": "text"})),
            ("increment", json!({"path": "/s"})),
            ("push", json!({"path": "/s", "value": 1})),
            ("remove", json!({"path": "/missing"})),
            ("set", json!({"path": "/no/parent", "value": 1})),
            ("set", json!({"path": "/s/0", "value": 1})),
        ]);
        assert_eq!(s, json!({"s": "text"}));
        assert!(errs[0].is_none());
        for (i, e) in errs.iter().enumerate().skip(1) {
            assert!(e.is_some(), "action {i} should have errored");
        }
        assert!(errs[1].as_deref().unwrap().contains("not a number"));
        assert!(errs[4].as_deref().unwrap().contains("/no does not exist"));
    }

    #[test]
    fn validation_rejects_bad_submissions_with_clear_errors() {
        let m = JsonModel;
        let e = m
            .validate("set", &json!({"path": "a", "value": 1}))
            .unwrap_err();
        assert!(e.message().contains("JSON Pointer"), "{e}");
        let e = m.validate("set", &json!({"path": "/a"})).unwrap_err();
        assert!(e.message().contains("\"value\""), "{e}");
        let e = m.validate("frobnicate", &json!({})).unwrap_err();
        assert!(e.message().contains("unknown action type"), "{e}");
        let e = m
            .validate("increment", &json!({"path": "/a", "by": "2"}))
            .unwrap_err();
        assert!(e.message().contains("must be a number"), "{e}");
        let e = m
            .validate("set", &json!({"path": "/a~2", "value": 1}))
            .unwrap_err();
        assert!(e.message().contains("escape"), "{e}");
        assert!(m.validate("set", &json!([1])).is_err());
    }
}
