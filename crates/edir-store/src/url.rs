//! Store URLs: `sqlite://PATH` (created when missing) and `postgres://USER[:PASS]@HOST[:PORT]/DB`.
//! Passwords never reach a message: [`StoreUrl`] displays `postgres://user:****@host/db`.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::StoreError;

/// Which database a store lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file (the default).
    Sqlite,
    /// A Postgres server (for many workers on many hosts).
    Postgres,
}

/// A parsed store URL.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl {
    raw: String,
    backend: Backend,
}

impl StoreUrl {
    /// Parses a URL.
    ///
    /// # Errors
    /// [`StoreError::UnsupportedUrl`] for anything but `sqlite:` and `postgres(ql)://` URLs.
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl { url: redact(url) });
        };
        Ok(Self {
            raw: url.to_string(),
            backend,
        })
    }

    /// The URL of a SQLite file.
    #[must_use]
    pub fn sqlite(path: &Path) -> Self {
        Self {
            raw: format!("sqlite://{}", path.display()),
            backend: Backend::Sqlite,
        }
    }

    /// The backend.
    #[must_use]
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// For SQLite, the database file.
    #[must_use]
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        if self.backend != Backend::Sqlite {
            return None;
        }
        let rest = self
            .raw
            .trim_start_matches("sqlite:")
            .trim_start_matches("//");
        let path = rest.split('?').next().unwrap_or(rest);
        Some(PathBuf::from(path))
    }

    /// The URL with credentials, for connecting only.
    pub(crate) fn expose(&self) -> &str {
        &self.raw
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.raw))
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({self})")
    }
}

/// Replaces the password of `scheme://user:password@host` with `****`.
#[must_use]
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or("");
            let hidden = if credentials.contains(':') {
                format!("{user}:****")
            } else {
                user.to_string()
            };
            format!("{scheme}://{hidden}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden() {
        let url = StoreUrl::parse("postgres://edir:s3cret@db:5432/edir").unwrap();
        assert_eq!(url.to_string(), "postgres://edir:****@db:5432/edir");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(redact("postgres://edir@db/edir"), "postgres://edir@db/edir");
    }

    #[test]
    fn sqlite_paths() {
        let url = StoreUrl::parse("sqlite://runs/x/store.sqlite?mode=rwc").unwrap();
        assert_eq!(
            url.sqlite_path().unwrap(),
            PathBuf::from("runs/x/store.sqlite")
        );
        assert!(StoreUrl::parse("mysql://x").is_err());
    }
}
