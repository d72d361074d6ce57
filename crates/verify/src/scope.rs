//! What a verification compares: the job's filters and database mapping, and the databases
//! named in the URLs.
//!
//! A source key is compared only when the job copies it: its database passes the filters'
//! database rules and its name the key rules. Source database `s` is compared with target
//! database `target_of(s)`. A target key belongs to the job when the job writes its
//! database (some source database that passes the filters is mapped there) and the key
//! rules accept its name; only such a key can be *extra*, and only when none of those
//! source databases holds it. Keys the job does not own are counted, never reported.
//!
//! A database in the source URL compares only that database (with the target database it
//! is mapped to; a key there is still looked for in every source database mapped to it); a
//! database in the target URL only that one (with the source databases mapped to it). When
//! both name one, those two are compared with each other, and nothing else explains a key.
//!
//! The filters' command rules do not name keys and are not applied here.

use std::sync::Arc;

use ferry_core::DbMap;
use ferry_core::Filter;

use crate::VerifyError;

#[derive(Debug, Clone)]
pub struct Scope {
    filter: Option<Arc<Filter>>,
    db_map: DbMap,
    /// The source URL's database: only it is compared.
    source_db: Option<u32>,
    /// The target URL's database: only it (and the source databases written there).
    target_db: Option<u32>,
}

impl Scope {
    pub fn new(
        filter: Option<Arc<Filter>>,
        db_map: DbMap,
        source_db: Option<u32>,
        target_db: Option<u32>,
    ) -> Result<Scope, VerifyError> {
        if let (Some(s), Some(t)) = (source_db, target_db) {
            let mapped = db_map.target(s);
            if !db_map.is_empty() && mapped != t {
                return Err(VerifyError::Config(format!(
                    "the source URL names db {s}, which the db map writes to db {mapped}, \
                     but the target URL names db {t}"
                )));
            }
        }
        Ok(Scope {
            filter,
            db_map,
            source_db,
            target_db,
        })
    }

    /// The target database that source database `s` is compared with.
    pub fn target_of(&self, s: u32) -> u32 {
        match (self.source_db, self.target_db) {
            // Both URLs name a database: they are compared with each other.
            (Some(sd), Some(td)) if sd == s => td,
            _ => self.db_map.target(s),
        }
    }

    /// The URLs let source database `s` be compared.
    pub fn source_selected(&self, s: u32) -> bool {
        self.source_db.is_none_or(|d| d == s)
            && self.target_db.is_none_or(|t| self.target_of(s) == t)
    }

    /// The URLs let target database `t` be scanned for extras.
    pub fn target_selected(&self, t: u32) -> bool {
        self.target_db.is_none_or(|d| d == t)
    }

    /// The filters copy source database `s`.
    pub fn db_allowed(&self, s: u32) -> bool {
        self.filter.as_ref().is_none_or(|f| f.db_allowed(s))
    }

    /// The filters copy a key of this name.
    pub fn key_allowed(&self, key: &[u8]) -> bool {
        self.filter.as_ref().is_none_or(|f| f.key_allowed(key))
    }

    /// Where a key of target database `t` is looked for on the source: every source
    /// database passing the filters that the job writes into `t` (when the source URL names
    /// one of them, the others still explain their copies), or only the source URL's
    /// database when both URLs name theirs.
    pub fn lookup_of(&self, t: u32) -> Vec<u32> {
        if self.source_db.is_some() && self.target_db.is_some() {
            return self.sources_of(t);
        }
        (self.db_map.sources(t).into_iter())
            .filter(|&s| self.target_of(s) == t && self.db_allowed(s))
            .collect()
    }

    /// The source databases, selected and passing the filters, that the job writes into
    /// target database `t`; empty when the job does not write `t` or the URLs leave it out.
    pub fn sources_of(&self, t: u32) -> Vec<u32> {
        let candidates = match self.source_db {
            Some(s) => vec![s],
            None => self.db_map.sources(t),
        };
        candidates
            .into_iter()
            .filter(|&s| self.target_of(s) == t && self.source_selected(s) && self.db_allowed(s))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use ferry_core::FilterRules;

    use super::*;

    fn map(s: &str) -> DbMap {
        s.parse().unwrap_or_default()
    }

    #[test]
    fn many_to_one_mapping_and_excluded_dbs() {
        let filter = Filter::new(&FilterRules {
            include_key_prefixes: vec!["user:".into()],
            exclude_dbs: vec![2],
            ..Default::default()
        })
        .ok()
        .map(Arc::new);
        let scope = Scope::new(filter, map("1:0,2:0,5:3"), None, None).expect("scope");
        assert_eq!(scope.target_of(1), 0);
        assert_eq!(scope.target_of(4), 4);
        // db 2 is excluded; db 1 and db 0 both land in 0.
        assert_eq!(scope.sources_of(0), vec![0, 1]);
        // Nothing is written into db 1 or db 5 any more; db 3 gets 3 and 5.
        assert!(scope.sources_of(1).is_empty());
        assert!(scope.sources_of(5).is_empty());
        assert_eq!(scope.sources_of(3), vec![3, 5]);
        assert!(!scope.db_allowed(2));
        assert!(scope.key_allowed(b"user:1"));
        assert!(!scope.key_allowed(b"order:1"));
    }

    #[test]
    fn url_databases() {
        // Both URLs name a database: they are compared with each other.
        let scope = Scope::new(None, DbMap::default(), Some(1), Some(2)).expect("scope");
        assert_eq!(scope.target_of(1), 2);
        assert_eq!(scope.sources_of(2), vec![1]);
        assert!(scope.sources_of(1).is_empty());
        assert!(scope.source_selected(1) && !scope.source_selected(2));
        assert_eq!(scope.lookup_of(2), vec![1]);
        // Only the source URL's database: its target database is scanned, and a key there
        // is looked for in every source database mapped to it.
        let scope = Scope::new(None, map("4:0"), Some(4), None).expect("scope");
        assert_eq!(scope.sources_of(0), vec![4]);
        assert_eq!(scope.lookup_of(0), vec![0, 4]);
        assert!(scope.sources_of(4).is_empty());
        // The target URL's database: the source databases written there.
        let scope = Scope::new(None, map("4:0"), None, Some(0)).expect("scope");
        assert!(scope.source_selected(4) && scope.source_selected(0));
        assert!(!scope.source_selected(1));
        assert_eq!(scope.sources_of(0), vec![0, 4]);
        assert!(!scope.target_selected(4));
        // A URL pair that the db map contradicts.
        assert!(Scope::new(None, map("1:0"), Some(1), Some(2)).is_err());
        assert!(Scope::new(None, map("1:2"), Some(1), Some(2)).is_ok());
    }
}
