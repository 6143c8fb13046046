//! Secrets from files: `FLEET_X_FILE` names a file (a mounted Kubernetes Secret) whose
//! content is the value of `FLEET_X`. Errors name the variable and the file, never the content.

use std::path::PathBuf;

/// A secret file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Both the variable and its `_FILE` form are set: which one wins would be a guess.
    #[error(
        "both {name} and {name}_FILE are set: keep only one (the file is preferred in Kubernetes)"
    )]
    Both {
        /// The variable.
        name: String,
    },
    /// The file cannot be read.
    #[error("{name}_FILE={}: cannot read it ({source}); check the path and the mount", file.display())]
    Unreadable {
        /// The variable.
        name: String,
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is empty (after trimming a trailing newline).
    #[error("{name}_FILE={}: the file is empty; put the value in it", file.display())]
    Empty {
        /// The variable.
        name: String,
        /// The file.
        file: PathBuf,
    },
}

/// The value of `name` from the file named by `{name}_FILE`, with a trailing newline trimmed;
/// `None` when `{name}_FILE` is unset. Setting both `name` and `{name}_FILE` is an error.
pub fn from_file(name: &str) -> Result<Option<String>, SecretError> {
    let Some(file) = std::env::var_os(format!("{name}_FILE")).filter(|f| !f.is_empty()) else {
        return Ok(None);
    };
    if std::env::var_os(name).is_some() {
        return Err(SecretError::Both { name: name.into() });
    }
    let file = PathBuf::from(file);
    let text = std::fs::read_to_string(&file).map_err(|source| SecretError::Unreadable {
        name: name.into(),
        file: file.clone(),
        source,
    })?;
    let value = text.trim_end_matches(['\n', '\r']).to_owned();
    if value.trim().is_empty() {
        return Err(SecretError::Empty {
            name: name.into(),
            file,
        });
    }
    Ok(Some(value))
}

/// Replaces `slot` with the value of `{name}_FILE` when that is set.
pub fn load_into(name: &str, slot: &mut Option<String>) -> Result<(), SecretError> {
    if let Some(v) = from_file(name)? {
        *slot = Some(v);
    }
    Ok(())
}
