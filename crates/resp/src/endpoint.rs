//! `redis://[user:pass@]host:port[/db]` addresses.

use std::fmt;
use std::str::FromStr;

use crate::tls::TlsOptions;

/// One Redis node and how to log in to it. `Display` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: Option<u32>,
    /// `rediss://`: speak TLS, as `tls_options` says.
    pub tls: bool,
    pub tls_options: TlsOptions,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("db", &self.db)
            .field("tls", &self.tls)
            .field("tls_options", &self.tls_options)
            .finish()
    }
}

impl Endpoint {
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Endpoint {
            host: host.into(),
            port,
            username: None,
            password: None,
            db: None,
            tls: false,
            tls_options: TlsOptions::default(),
        }
    }

    /// `host:port`, as Redis prints addresses.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Same node, other credentials kept.
    pub fn with_addr(&self, host: &str, port: u16) -> Self {
        Endpoint {
            host: host.to_string(),
            port,
            ..self.clone()
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad address {input:?}: {reason}")]
pub struct EndpointError {
    pub input: String,
    pub reason: String,
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    /// Accepts `redis://…`, `rediss://…` and a bare `host:port`. User and password are
    /// percent-decoded, so any character can be given (`'` needs no escaping at all).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| EndpointError {
            input: redact(s),
            reason: reason.to_string(),
        };
        let with_scheme = if s.contains("://") {
            s.to_string()
        } else {
            format!("redis://{s}")
        };
        let url = url::Url::parse(&with_scheme).map_err(|e| err(&e.to_string()))?;
        let tls = match url.scheme() {
            "redis" => false,
            "rediss" => true,
            other => {
                return Err(err(&format!(
                    "scheme {other:?} is not redis:// or rediss://"
                )))
            }
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| err("no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = url.port().unwrap_or(6379);
        if port == 0 {
            return Err(err("port 0"));
        }
        let decode = |v: &str| -> Result<String, EndpointError> {
            percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| err("user or password is not UTF-8 after percent-decoding"))
        };
        let username = match url.username() {
            "" => None,
            u => Some(decode(u)?),
        };
        let password = url.password().map(decode).transpose()?;
        let db = match url.path().trim_start_matches('/') {
            "" => None,
            d => Some(
                d.parse::<u32>()
                    .map_err(|_| err("database must be a number"))?,
            ),
        };
        Ok(Endpoint {
            host,
            port,
            username,
            password,
            db,
            tls,
            tls_options: TlsOptions::default(),
        })
    }
}

/// The input with any password replaced, for error messages.
fn redact(s: &str) -> String {
    match (s.find("://"), s.rfind('@')) {
        (Some(i), Some(at)) if at > i => {
            let creds = &s[i + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &s[..i + 3], &creds[..c], &s[at..]),
                None => s.to_string(),
            }
        }
        _ => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forms() {
        let e: Endpoint = "redis://127.0.0.1:7000".parse().unwrap();
        assert_eq!(e.addr(), "127.0.0.1:7000");
        assert_eq!(e.password, None);
        let e: Endpoint = "redis://:p%40ss'w@h:1/3".parse().unwrap();
        assert_eq!(e.password.as_deref(), Some("p@ss'w"));
        assert_eq!(e.username, None);
        assert_eq!(e.db, Some(3));
        let e: Endpoint = "rediss://alice:it's+me@h".parse().unwrap();
        assert!(e.tls);
        assert_eq!(e.username.as_deref(), Some("alice"));
        assert_eq!(e.password.as_deref(), Some("it's+me"));
        assert_eq!(e.port, 6379);
        let e: Endpoint = "localhost:6380".parse().unwrap();
        assert_eq!(e.addr(), "localhost:6380");
        assert!("http://h:1".parse::<Endpoint>().is_err());
        assert!("redis://h:1/x".parse::<Endpoint>().is_err());
        assert!("redis://h:99999".parse::<Endpoint>().is_err());
    }

    #[test]
    fn never_prints_password() {
        let e: Endpoint = "redis://u:secret@h:1".parse().unwrap();
        assert!(!format!("{e} {e:?}").contains("secret"));
        let err = "redis://u:secret@h:1/x".parse::<Endpoint>().unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}
