//! What a target server is and which RDB payloads it accepts.

use ferry_resp::Info;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerVersion {
    /// "redis" or "valkey".
    pub product: String,
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl ServerVersion {
    /// From `INFO server`; Valkey reports a Redis-compatible `redis_version` and its own in
    /// `valkey_version`.
    pub fn from_info(info: &Info) -> Option<ServerVersion> {
        let (product, text) = match info.get("valkey_version") {
            Some(v) => ("valkey", v),
            None => ("redis", info.get("redis_version")?),
        };
        let mut it = text.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        Some(ServerVersion {
            product: product.into(),
            major: it.next()?,
            minor: it.next().unwrap_or(0),
            patch: it.next().unwrap_or(0),
        })
    }

    /// The newest RDB version this server can load (and so `RESTORE`).
    pub fn max_rdb_version(&self) -> u16 {
        let v = (self.major, self.minor);
        if self.product == "valkey" {
            return match v {
                (9.., _) => 80,
                (8, _) | (7, _) => 11,
                _ => 11,
            };
        }
        match v {
            // Redis 8.2 still writes and `RESTORE`s RDB 12 (it refuses 13); a later Redis
            // reads 12 too, and a newer payload is never needed for what ferry writes.
            (7, 4..) | (8.., _) => 12,
            (7, 2..) => 11,
            (7, _) => 10,
            (5, _) | (6, _) => 9,
            (4, _) => 8,
            (3, 2..) => 7,
            _ => 6,
        }
    }
}

impl std::fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = if self.product == "valkey" {
            "Valkey"
        } else {
            "Redis"
        };
        write!(f, "{name} {}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let info = Info::parse("# Server\r\nredis_version:7.0.15\r\n");
        let v = ServerVersion::from_info(&info).unwrap();
        assert_eq!(v.max_rdb_version(), 10);
        assert_eq!(v.to_string(), "Redis 7.0.15");
        let info = Info::parse("redis_version:7.2.4\r\nvalkey_version:8.1.0\r\n");
        let v = ServerVersion::from_info(&info).unwrap();
        assert_eq!(v.product, "valkey");
        assert_eq!(v.max_rdb_version(), 11);
        let info = Info::parse("redis_version:6.0.9\r\n");
        assert_eq!(
            ServerVersion::from_info(&info).unwrap().max_rdb_version(),
            9
        );
        let info = Info::parse("redis_version:8.2.3\r\n");
        assert_eq!(
            ServerVersion::from_info(&info).unwrap().max_rdb_version(),
            12
        );
    }
}
