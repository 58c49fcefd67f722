//! Store-level settings kept as JSON in the repository directory
//! (`policy.json`, `parity.json`).

use super::*;

/// A store-level setting kept as JSON in the repository directory, with a
/// default when the file is absent.
pub(crate) trait Setting: serde::Serialize + serde::de::DeserializeOwned + Default {
    /// Its file name in the repository directory.
    const FILE: &'static str;
    /// Checks a value read from the file or given by a user.
    fn check(&self) -> std::result::Result<(), String>;
}

impl Setting for Policy {
    const FILE: &'static str = "policy.json";
    fn check(&self) -> std::result::Result<(), String> {
        self.validate()
    }
}

impl Setting for crate::parity::ParityConfig {
    const FILE: &'static str = "parity.json";
    fn check(&self) -> std::result::Result<(), String> {
        self.validate()
    }
}

pub(super) fn read_setting<T: Setting>(root: &Path) -> Result<T> {
    let path = root.join(T::FILE);
    match fs::read(&path) {
        Ok(b) => {
            let v: T = serde_json::from_slice(&b)
                .map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))?;
            v.check().map_err(Error::Denied)?;
            Ok(v)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(Error::io(path, e)),
    }
}

pub(super) fn valid_key_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 64 && n.bytes().all(|b| b.is_ascii_hexdigit())
}
