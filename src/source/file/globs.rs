//! The `[[files]]` globs as the walk ([`super::walk`]) uses them: each pattern
//! split into its *root*, the folders it names before its first wildcard (where
//! the walk starts), and the *parts* below it, one per path component.
//!
//! Promises:
//! - a folder's [`States`] say which part of which pattern its entries must
//!   match next, so [`Globs::step`] tells for a name, without touching the
//!   disk, whether it is a match (a file to tail) and what may still match
//!   inside it; a folder inside which nothing can match is never entered;
//! - matching is the `glob` crate's, component by component, as `glob::glob`
//!   did it: case-sensitive, `*` and `?` never cross a `/`, a leading dot
//!   needs no literal dot, `**` is any number of folders (none included), a
//!   pattern ending in `**` matches folders only (so no file), names that are
//!   not UTF-8 match literal parts only.

use std::ffi::{OsStr, OsString};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use glob::{MatchOptions, Pattern};

const OPTIONS: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

/// One path component of a pattern below its root.
#[derive(Debug)]
pub(super) enum Part {
    /// A name without wildcards: looked up, never listed for.
    Name(OsString),
    Glob(Pattern),
    /// `**`.
    AnyDepth,
}

/// One pattern of one `[[files]]` entry.
#[derive(Debug)]
pub(super) struct Glob {
    pub entry: usize,
    /// The entry's `follow_symlinks`: the walk may go through a symlink to a
    /// folder for this pattern.
    pub follow: bool,
    pub text: String,
    parts: Vec<Part>,
}

/// A pattern, and the part its next component has to match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct State {
    pub glob: u32,
    pub part: u32,
}

/// What the entries of a folder may still match: sorted, without duplicates,
/// and closed over `**` (a state at `**` comes with the state after it).
/// Shared, as the many folders of a tree mostly have the same.
pub(super) type States = Arc<[State]>;

/// Where the walk starts: a folder the patterns name, with what its entries
/// may match.
#[derive(Debug)]
pub(super) struct Root {
    /// Empty for patterns relative to the working folder (their matches are
    /// named as `glob` named them, without `./`).
    pub path: PathBuf,
    pub states: States,
}

/// What a name matches in a folder with given [`States`].
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Step {
    /// The entries (ascending) of the patterns it completes: a file there is
    /// theirs to tail.
    pub matches: Vec<usize>,
    /// What may still match inside it, if it is a folder.
    pub inside: Option<States>,
}

impl Step {
    pub(super) fn is_empty(&self) -> bool {
        self.matches.is_empty() && self.inside.is_none()
    }
}

/// Every pattern of every entry, compiled, and their roots.
#[derive(Debug)]
pub(super) struct Globs {
    pub globs: Vec<Glob>,
    pub roots: Vec<Root>,
}

/// Why a pattern cannot be used.
#[derive(Debug)]
pub(super) struct BadPattern {
    pub entry: usize,
    pub pattern: String,
    pub reason: String,
}

impl Globs {
    /// Compiles `entries`: each entry's patterns and its `follow_symlinks`.
    pub(super) fn new<'a>(
        entries: impl IntoIterator<Item = (&'a [String], bool)>,
    ) -> Result<Self, BadPattern> {
        let mut globs = Vec::new();
        let mut roots: Vec<(PathBuf, Vec<State>)> = Vec::new();
        for (entry, (patterns, follow)) in entries.into_iter().enumerate() {
            for text in patterns {
                let bad = |reason: String| BadPattern {
                    entry,
                    pattern: text.clone(),
                    reason,
                };
                // Validates the whole as the configuration check does.
                Pattern::new(text).map_err(|e| bad(e.to_string()))?;
                let (root, parts) = split(text).map_err(bad)?;
                let glob =
                    u32::try_from(globs.len()).map_err(|_| bad("too many patterns".into()))?;
                globs.push(Glob {
                    entry,
                    follow,
                    text: text.clone(),
                    parts,
                });
                if globs.last().is_some_and(|g| g.parts.is_empty()) {
                    // Matches nothing a file can be (a pattern ending in `/`).
                    continue;
                }
                let state = State { glob, part: 0 };
                match roots.iter_mut().find(|(p, _)| *p == root) {
                    Some((_, states)) => states.push(state),
                    None => roots.push((root, vec![state])),
                }
            }
        }
        let mut compiled = Globs {
            globs,
            roots: Vec::new(),
        };
        compiled.roots = roots
            .into_iter()
            .map(|(path, states)| Root {
                states: compiled.close(states),
                path,
            })
            .collect();
        Ok(compiled)
    }

    fn part(&self, s: State) -> Option<&Part> {
        self.globs.get(s.glob as usize)?.parts.get(s.part as usize)
    }

    /// Adds the state after each `**` (which may match no folder), sorts and
    /// deduplicates.
    fn close(&self, mut states: Vec<State>) -> States {
        let mut i = 0;
        while i < states.len() {
            let s = states[i];
            if let Some(Part::AnyDepth) = self.part(s) {
                let next = State {
                    glob: s.glob,
                    part: s.part + 1,
                };
                // A pattern ending in `**` matches the folder itself there:
                // not a file, so nothing to add.
                if self.part(next).is_some() && !states.contains(&next) {
                    states.push(next);
                }
            }
            i += 1;
        }
        states.sort_unstable();
        states.dedup();
        states.into()
    }

    /// What `name` matches in a folder whose entries may match `states`.
    pub(super) fn step(&self, states: &[State], name: &OsStr) -> Step {
        let mut matches = Vec::new();
        let mut inside = Vec::new();
        let text = name.to_str();
        for &s in states {
            let Some(glob) = self.globs.get(s.glob as usize) else {
                continue;
            };
            let hit = match glob.parts.get(s.part as usize) {
                Some(Part::AnyDepth) => {
                    // Any folder: the same state goes on inside it.
                    inside.push(s);
                    false
                }
                Some(Part::Name(n)) => n == name,
                Some(Part::Glob(p)) => text.is_some_and(|t| p.matches_with(t, OPTIONS)),
                None => false,
            };
            if !hit {
                continue;
            }
            let next = s.part + 1;
            if next as usize == glob.parts.len() {
                matches.push(glob.entry);
            } else {
                inside.push(State {
                    glob: s.glob,
                    part: next,
                });
            }
        }
        matches.sort_unstable();
        matches.dedup();
        Step {
            matches,
            inside: (!inside.is_empty()).then(|| self.close(inside)),
        }
    }

    /// The names to look up when every state wants a literal name: such a
    /// folder is not listed (a home folder full of anything, under
    /// `/home/*/logs/*.log`, costs one lookup).
    pub(super) fn names_only<'a>(&'a self, states: &[State]) -> Option<Vec<&'a OsStr>> {
        let mut names: Vec<&OsStr> = Vec::new();
        for &s in states {
            match self.part(s)? {
                Part::Name(n) => {
                    if !names.contains(&n.as_os_str()) {
                        names.push(n);
                    }
                }
                _ => return None,
            }
        }
        Some(names)
    }

    /// The states whose patterns may go through a symlink to a folder.
    pub(super) fn following(&self, states: &States) -> Option<States> {
        let kept: Vec<State> = states
            .iter()
            .copied()
            .filter(|s| self.globs.get(s.glob as usize).is_some_and(|g| g.follow))
            .collect();
        match kept.len() {
            0 => None,
            n if n == states.len() => Some(states.clone()),
            _ => Some(kept.into()),
        }
    }

    /// The text of the first pattern among `states`, for messages.
    pub(super) fn text_of(&self, states: &[State]) -> &str {
        states
            .first()
            .and_then(|s| self.globs.get(s.glob as usize))
            .map_or("", |g| g.text.as_str())
    }

    /// The first entry among `states`' patterns.
    pub(super) fn entry_of(&self, states: &[State]) -> Option<usize> {
        states
            .iter()
            .filter_map(|s| self.globs.get(s.glob as usize))
            .map(|g| g.entry)
            .min()
    }
}

/// Splits a pattern into its root (the components before the first one with
/// a wildcard) and the parts below it. A pattern without wildcards is the
/// folder that holds it and its last name.
fn split(text: &str) -> Result<(PathBuf, Vec<Part>), String> {
    let path = Path::new(text);
    let mut root = PathBuf::new();
    let mut parts = Vec::new();
    for c in path.components() {
        let s = c.as_os_str();
        let wild = s.to_str().is_some_and(|s| s.contains(['*', '?', '[']));
        if parts.is_empty() && !wild {
            root.push(c);
            continue;
        }
        parts.push(match (c, s.to_str()) {
            (_, Some("**")) => Part::AnyDepth,
            (_, Some(t)) if wild => Part::Glob(Pattern::new(t).map_err(|e| e.to_string())?),
            (Component::Normal(n), _) => Part::Name(n.to_os_string()),
            (Component::ParentDir, _) => Part::Name("..".into()),
            (Component::CurDir, _) => continue,
            (Component::RootDir | Component::Prefix(_), _) => continue,
        });
    }
    if text.ends_with('/') {
        // `glob` matches folders only there.
        return Ok((root, Vec::new()));
    }
    if parts.is_empty() {
        // A literal path: its folder, and its name there.
        let Some(name) = root.file_name().map(OsStr::to_os_string) else {
            return Ok((root, Vec::new()));
        };
        root.pop();
        parts.push(Part::Name(name));
    }
    if root.as_os_str() == "." {
        root = PathBuf::new();
    }
    Ok((root, parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn globs(patterns: &[&str]) -> Globs {
        let p: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        Globs::new([(p.as_slice(), false)]).unwrap()
    }

    #[test]
    fn a_pattern_starts_at_its_fixed_folders() {
        let g = globs(&[
            "/tmp/alloy/logs/*.log",
            "/var/log/**/*.log",
            "/srv/*/logs/app.log",
            "/var/log/syslog",
            "*.log",
            "./x/*.log",
        ]);
        let roots: Vec<&Path> = g.roots.iter().map(|r| r.path.as_path()).collect();
        assert_eq!(
            roots,
            [
                Path::new("/tmp/alloy/logs"),
                Path::new("/var/log"),
                Path::new("/srv"),
                Path::new(""),
                Path::new("./x"),
            ]
        );
        // `/var/log/**/*.log` and `/var/log/syslog` share their root.
        assert_eq!(g.roots[1].states.len(), 3);
    }

    #[test]
    fn a_step_says_what_matches_and_what_may_match_inside() {
        let g = globs(&["/h/*/logs/*.log"]);
        let root = g.roots[0].states.clone();
        let home = g.step(&root, OsStr::new("alice"));
        assert!(home.matches.is_empty());
        let home = home.inside.unwrap();
        assert_eq!(g.names_only(&home), Some(vec![OsStr::new("logs")]));
        assert!(g.step(&home, OsStr::new("node_modules")).is_empty());
        let logs = g.step(&home, OsStr::new("logs")).inside.unwrap();
        assert_eq!(g.names_only(&logs), None);
        let file = g.step(&logs, OsStr::new("a.log"));
        assert_eq!(file.matches, [0]);
        assert!(file.inside.is_none());
        assert!(g.step(&logs, OsStr::new("a.txt")).is_empty());
    }

    #[test]
    fn double_star_matches_any_depth_and_a_trailing_one_no_file() {
        let g = globs(&["/t/**/*.log", "/u/**"]);
        let t = g.roots[0].states.clone();
        assert_eq!(g.step(&t, OsStr::new("top.log")).matches, [0]);
        let sub = g.step(&t, OsStr::new("sub")).inside.unwrap();
        assert_eq!(sub, t, "the same states all the way down");
        assert_eq!(g.step(&sub, OsStr::new(".hidden.log")).matches, [0]);
        let u = g.roots[1].states.clone();
        let step = g.step(&u, OsStr::new("x.log"));
        assert!(step.matches.is_empty());
        assert!(step.inside.is_some());
    }

    #[test]
    fn patterns_of_two_entries_keep_their_entries_and_follow_flags() {
        let a = vec!["/d/*.log".to_string()];
        let b = vec!["/d/app.*".to_string()];
        let g = Globs::new([(a.as_slice(), false), (b.as_slice(), true)]).unwrap();
        assert_eq!(g.roots.len(), 1);
        let root = g.roots[0].states.clone();
        assert_eq!(g.step(&root, OsStr::new("app.log")).matches, [0, 1]);
        assert_eq!(g.step(&root, OsStr::new("x.log")).matches, [0]);
        let deep = vec!["/e/*/x.log".to_string()];
        let g = Globs::new([(deep.as_slice(), false), (deep.as_slice(), true)]).unwrap();
        let inside = g.step(&g.roots[0].states, OsStr::new("d")).inside.unwrap();
        assert_eq!(inside.len(), 2);
        assert_eq!(g.following(&inside).unwrap().len(), 1);
    }

    #[test]
    fn a_bad_pattern_names_its_entry() {
        let p = vec!["/ok/*.log".to_string(), "/bad/a**/x".to_string()];
        let e = Globs::new([(p.as_slice(), false)]).unwrap_err();
        assert_eq!((e.entry, e.pattern.as_str()), (0, "/bad/a**/x"));
    }
}
