//! The per-install admin token: what the admin API (`/api/*`) asks for besides an API key.
//!
//! It is made once, kept in the data directory readable by its owner only (0600), and reaches
//! the UI without the user typing it: the page served from a loopback `Host` sets it as an
//! HttpOnly, SameSite=Strict cookie (no script can read it, no other site's request carries
//! it), and the desktop app hands it to its window over IPC. Local tools (`lantern compare`,
//! scripts) read the file.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The token, as 64 hex digits.
#[derive(Clone)]
pub struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// Where a data directory keeps it.
    pub fn path(home: &Path) -> PathBuf {
        home.join("admin-token")
    }

    /// The saved token, or a new one written with owner-only permissions. A file that exists
    /// but does not hold a token is an error, never overwritten.
    pub fn load_or_create(home: &Path) -> std::io::Result<Self> {
        let path = Self::path(home);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let token = text.trim();
                if token.len() >= 32 && token.chars().all(|c| c.is_ascii_hexdigit()) {
                    Ok(Self(token.to_string()))
                } else {
                    Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "{} does not hold an admin token (64 hex digits); remove it and \
                             a new one is made at the next start",
                            path.display()
                        ),
                    ))
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(home)?;
                let token: String = (0..32)
                    .map(|_| format!("{:02x}", rand::random::<u8>()))
                    .collect();
                let tmp = path.with_extension("tmp");
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create(true).truncate(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = options.open(&tmp)?;
                file.write_all(token.as_bytes())?;
                file.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                Ok(Self(token))
            }
            Err(e) => Err(e),
        }
    }

    /// The token read from a data directory, for a local client of a running server.
    pub fn read(home: &Path) -> Option<String> {
        std::fs::read_to_string(Self::path(home))
            .ok()
            .map(|t| t.trim().to_string())
    }

    pub fn secret(&self) -> &str {
        &self.0
    }

    /// Compared in constant time, so a wrong guess says nothing about how close it was.
    pub fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.trim().as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// The cookie's name: one per port, so two servers on one machine keep their own.
    pub fn cookie_name(port: u16) -> String {
        format!("lantern_admin_{port}")
    }

    /// The `Set-Cookie` value the UI's page load carries.
    pub fn set_cookie(&self, port: u16) -> String {
        format!(
            "{}={}; Path=/; HttpOnly; SameSite=Strict",
            Self::cookie_name(port),
            self.0
        )
    }

    /// The token a request's `Cookie` header carries for this port, if any.
    pub fn from_cookies(header: &str, port: u16) -> Option<&str> {
        let name = Self::cookie_name(port);
        header
            .split(';')
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_owner_only_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = AdminToken::load_or_create(dir.path()).unwrap();
        let b = AdminToken::load_or_create(dir.path()).unwrap();
        assert_eq!(a.secret(), b.secret());
        assert_eq!(a.secret().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(AdminToken::path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(a.matches(b.secret()));
        assert!(!a.matches(&b.secret()[1..]));
        assert!(!a.matches(""));
        assert_eq!(AdminToken::read(dir.path()).as_deref(), Some(a.secret()));
    }

    #[test]
    fn a_file_that_is_not_a_token_is_an_error_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(AdminToken::path(dir.path()), "hello").unwrap();
        let e = AdminToken::load_or_create(dir.path()).unwrap_err();
        assert!(e.to_string().contains("admin-token"), "{e}");
        assert_eq!(
            std::fs::read_to_string(AdminToken::path(dir.path())).unwrap(),
            "hello"
        );
    }

    #[test]
    fn cookies_by_port() {
        let header = "a=1; lantern_admin_8080=abc; lantern_admin_9=zzz";
        assert_eq!(AdminToken::from_cookies(header, 8080), Some("abc"));
        assert_eq!(AdminToken::from_cookies(header, 9), Some("zzz"));
        assert_eq!(AdminToken::from_cookies(header, 80), None);
        let dir = tempfile::tempdir().unwrap();
        let t = AdminToken::load_or_create(dir.path()).unwrap();
        let c = t.set_cookie(8080);
        assert!(
            c.contains("HttpOnly") && c.contains("SameSite=Strict"),
            "{c}"
        );
    }
}
