//! Configuration errors: the JSON path of the bad field and a message naming the value, printed
//! as one log line (`invalid canary-guard configuration: analysis.stepWeights: ...`).

use serde_path_to_error::Segment;
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// JSON path of the bad field, e.g. `analysis.stepWeights`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (field, message) = (one_line(&self.field), one_line(&self.message));
        if field.is_empty() {
            write!(f, "invalid canary-guard configuration: {message}")
        } else {
            write!(f, "invalid canary-guard configuration: {field}: {message}")
        }
    }
}

/// Escapes control characters (an unknown key or a header name may hold a newline), so that an
/// error stays one log line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

pub(super) fn err<T>(
    field: impl Into<String>,
    message: impl Into<String>,
) -> Result<T, ConfigError> {
    Err(ConfigError {
        field: field.into(),
        message: message.into(),
    })
}

/// The JSON path as `analysis.metrics[0].name`. serde_path_to_error writes "?" for a place it
/// could not name (a syntax error where a key was due): that names the object around it instead.
pub(super) fn field_of(path: &serde_path_to_error::Path) -> String {
    let mut field = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => field.push_str(&format!("[{index}]")),
            Segment::Map { key: name } | Segment::Enum { variant: name } => {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(name);
            }
            Segment::Unknown => {}
        }
    }
    field
}
