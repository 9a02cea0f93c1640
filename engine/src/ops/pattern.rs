//! Path patterns, shared by `backup --exclude`, `restore --include/--exclude` and `find`.
//!
//! A pattern without `/` matches a name at any depth (`*.log`, `cache`); one with `/` matches the
//! whole absolute path (`/srv/*/tmp`), and one with `/` that does not start with it matches at
//! any depth (`db/*.sql` matches `/srv/db/a.sql`). `*` and `?` do not cross `/`, `**` does;
//! `[abc]` is a class and `\` escapes.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::{Error, Result};

/// Whether `s` holds glob syntax (and is a pattern rather than a literal path).
pub fn is_pattern(s: &[u8]) -> bool {
    s.iter().any(|b| matches!(b, b'*' | b'?' | b'['))
}

/// Builds a matcher for `patterns` (see the module documentation); `what` names the option in
/// errors ("exclude pattern ...").
pub fn pattern_set(patterns: &[String], what: &str) -> Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let full = if p.starts_with('/') {
            p.clone()
        } else {
            format!("**/{p}")
        };
        let g = GlobBuilder::new(&full)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|e| Error::Invalid(format!("{what} pattern {p:?}: {e}")))?;
        b.add(g);
    }
    b.build()
        .map_err(|e| Error::Invalid(format!("{what} patterns: {e}")))
}

/// Whether `set` matches the snapshot path `path` (absolute, raw bytes).
pub fn matches(set: &GlobSet, path: &[u8]) -> bool {
    set.is_match(OsStr::from_bytes(path))
}

/// Which entries of a snapshot a restore takes: `--include` paths (exact, or patterns) and
/// `--exclude` patterns. An excluded entry is left out with everything below it; with includes,
/// an entry is taken when it or a directory above it is included.
pub struct Selection {
    exact: Vec<Vec<u8>>,
    globs: Option<GlobSet>,
    excludes: Option<GlobSet>,
    /// Directories taken whole (walked before their entries): everything below is taken.
    whole: HashSet<Vec<u8>>,
    /// Whether each pattern include matched something (for the "matched nothing" warning).
    pattern_hits: bool,
}

impl Selection {
    pub fn new(includes: &[Vec<u8>], excludes: &[String]) -> Result<Self> {
        let (pats, exact): (Vec<&Vec<u8>>, Vec<&Vec<u8>>) =
            includes.iter().partition(|i| is_pattern(i));
        let pats: Vec<String> = pats
            .into_iter()
            .map(|p| {
                String::from_utf8(p.clone()).map_err(|_| {
                    Error::Invalid(format!(
                        "include pattern {:?} is not UTF-8",
                        String::from_utf8_lossy(p)
                    ))
                })
            })
            .collect::<Result<_>>()?;
        Ok(Selection {
            exact: exact.into_iter().cloned().collect(),
            globs: (!pats.is_empty())
                .then(|| pattern_set(&pats, "include"))
                .transpose()?,
            excludes: (!excludes.is_empty())
                .then(|| pattern_set(excludes, "exclude"))
                .transpose()?,
            whole: HashSet::new(),
            pattern_hits: false,
        })
    }

    /// The includes that name one path (checked to exist before a restore starts).
    pub fn exact_includes(&self) -> &[Vec<u8>] {
        &self.exact
    }

    /// Whether include patterns were given and none matched (after the walk).
    pub fn patterns_matched_nothing(&self) -> bool {
        self.globs.is_some() && !self.pattern_hits
    }

    pub fn excluded(&self, path: &[u8]) -> bool {
        self.excludes.as_ref().is_some_and(|s| matches(s, path))
    }

    /// (take this entry, walk into it) for the entry at `path`. Directories must be decided
    /// before the entries below them, as a depth-first walk does.
    pub fn decide(&mut self, path: &[u8], is_dir: bool) -> (bool, bool) {
        if self.excluded(path) {
            return (false, false);
        }
        if self.exact.is_empty() && self.globs.is_none() {
            return (true, true);
        }
        let parent = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => &path[..i],
            None => &b""[..],
        };
        let mut take = self.whole.contains(parent);
        let mut descend = take;
        if !take {
            let pc = super::ls::components(path);
            for inc in &self.exact {
                let ic = super::ls::components(inc);
                if pc.len() >= ic.len() && pc[..ic.len()] == ic[..] {
                    take = true;
                } else if ic.len() > pc.len() && ic[..pc.len()] == pc[..] {
                    descend = true;
                }
            }
        }
        if !take {
            if let Some(g) = &self.globs {
                if matches(g, path) {
                    take = true;
                    self.pattern_hits = true;
                } else {
                    // Anything below may match.
                    descend = true;
                }
            }
        }
        if take && is_dir {
            self.whole.insert(path.to_vec());
        }
        (take, take || descend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_names_anywhere_and_paths_from_the_root() {
        let s = pattern_set(
            &["*.log".into(), "/srv/*/tmp".into(), "db/*.sql".into()],
            "x",
        )
        .unwrap();
        assert!(matches(&s, b"/a/b/c.log"));
        assert!(matches(&s, b"/c.log"));
        assert!(!matches(&s, b"/a/c.log.gz"));
        assert!(matches(&s, b"/srv/app/tmp"));
        assert!(!matches(&s, b"/srv/app/x/tmp"));
        assert!(!matches(&s, b"/x/srv/app/tmp"));
        assert!(matches(&s, b"/srv/db/a.sql"));
        assert!(!matches(&s, b"/srv/db/x/a.sql"));
        assert!(pattern_set(&["[".into()], "exclude")
            .unwrap_err()
            .to_string()
            .contains("exclude pattern \"[\""));
    }

    #[test]
    fn selection_takes_includes_with_what_is_below_and_drops_excludes() {
        let mut s =
            Selection::new(&[b"/srv/a".to_vec(), b"*.sql".to_vec()], &["*.tmp".into()]).unwrap();
        assert_eq!(s.decide(b"/srv", true), (false, true));
        assert_eq!(s.decide(b"/srv/a", true), (true, true));
        assert_eq!(s.decide(b"/srv/a/x", false), (true, true));
        assert_eq!(s.decide(b"/srv/a/x.tmp", false), (false, false));
        assert_eq!(s.decide(b"/srv/b", true), (false, true));
        assert_eq!(s.decide(b"/srv/b/c", false), (false, true));
        assert!(s.patterns_matched_nothing());
        assert_eq!(s.decide(b"/srv/b/d.sql", false), (true, true));
        assert!(!s.patterns_matched_nothing());
        let mut all = Selection::new(&[], &["/srv/b".into()]).unwrap();
        assert_eq!(all.decide(b"/srv/a", true), (true, true));
        assert_eq!(all.decide(b"/srv/b", true), (false, false));
    }
}
