//! `--db-map 0:0,1:0,5:3`: which target database each source database is written to.
//! Applied by the writer where it `SELECT`s, never to the events: checkpoints record the
//! source's database, so a resume continues in the right place whatever the mapping.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Source db → target db; a db not listed keeps its number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DbMap(BTreeMap<u32, u32>);

impl DbMap {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The target database for source database `db`.
    pub fn target(&self, db: u32) -> u32 {
        self.0.get(&db).copied().unwrap_or(db)
    }

    /// The source databases written into target database `t`: those mapped to it, and `t`
    /// itself unless it is mapped elsewhere.
    pub fn sources(&self, t: u32) -> Vec<u32> {
        let mut s: Vec<u32> = (self.0.iter())
            .filter(|(_, &d)| d == t)
            .map(|(&s, _)| s)
            .collect();
        if !self.0.contains_key(&t) {
            s.push(t);
            s.sort_unstable();
        }
        s
    }

    /// Target databases that more than one source database lands in (listed or kept by
    /// number), with those source databases: their keys may collide.
    pub fn shared_targets(&self) -> Vec<(u32, Vec<u32>)> {
        let mut by_target: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for (&s, &t) in &self.0 {
            by_target.entry(t).or_default().push(s);
        }
        // An unlisted source db with the same number as a listed target keeps writing there.
        for (&t, sources) in by_target.iter_mut() {
            if !self.0.contains_key(&t) && !sources.contains(&t) {
                sources.push(t);
                sources.sort_unstable();
            }
        }
        by_target.into_iter().filter(|(_, s)| s.len() > 1).collect()
    }
}

impl FromStr for DbMap {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut map = BTreeMap::new();
        for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || format!("bad db map entry {pair:?}: use source:target, e.g. 1:0");
            let (src, dst) = pair.split_once(':').ok_or_else(bad)?;
            let src: u32 = src.trim().parse().map_err(|_| bad())?;
            let dst: u32 = dst.trim().parse().map_err(|_| bad())?;
            if map.insert(src, dst).is_some() {
                return Err(format!("db map lists source db {src} twice"));
            }
        }
        Ok(DbMap(map))
    }
}

impl fmt::Display for DbMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(s, t)| format!("{s}:{t}")).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_maps() {
        let m: DbMap = "0:0, 1:0,5:3".parse().unwrap();
        assert_eq!(m.target(1), 0);
        assert_eq!(m.target(5), 3);
        assert_eq!(m.target(7), 7);
        assert_eq!(m.shared_targets(), vec![(0, vec![0, 1]), (3, vec![3, 5])]);
        let m: DbMap = "1:3".parse().unwrap();
        assert_eq!(m.shared_targets(), vec![(3, vec![1, 3])]);
        assert_eq!(m.sources(3), vec![1, 3]);
        assert_eq!(m.sources(1), Vec::<u32>::new());
        assert_eq!(m.sources(7), vec![7]);
        assert!("".parse::<DbMap>().unwrap().is_empty());
        assert!("1".parse::<DbMap>().is_err());
        assert!("a:1".parse::<DbMap>().is_err());
        assert!("1:2,1:3".parse::<DbMap>().is_err());
        assert_eq!(m.to_string(), "1:3");
    }
}
