//! The commit of HEAD of the git work tree `exec` runs in (its working
//! directory), read before the command starts and after it ends, so the run's
//! span says what the iteration committed.
//!
//! Read from the repository's files ([`from_files`]), as `git rev-parse
//! --verify HEAD` would find it, without starting git (a process start costs
//! milliseconds, twice per run): the `.git` folder (or a linked work tree's
//! `.git` file and its `gitdir:`) looked for upwards from the working directory
//! as git looks for it, then HEAD, the loose ref it names (in the work tree's
//! own folder or the common one) or `packed-refs`. Every read is bounded, of a
//! regular file, never through a symlink at its last step, never blocking on a
//! FIFO. Whatever the plain layout does not settle (a variable that steers git's
//! discovery, a repository owned by another user (git's `safe.directory`), a
//! bare repository, a reftable, repository extensions, a legacy symlinked HEAD,
//! a broken or oversized file) is left to git itself, as before: `git rev-parse
//! --verify --quiet HEAD`, its stdin and stderr closed, killed after
//! [`GIT_TIMEOUT`]. No work tree, a repository without commits, one git refuses
//! or a git that hangs give nothing, silently, and delay the command by at most
//! the bound.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rustix::fs::{Mode, OFlags};

/// How long `git rev-parse` may take (it takes milliseconds).
pub const GIT_TIMEOUT: Duration = Duration::from_millis(500);

/// A commit hash as git prints it: 40 (SHA-1) or 64 (SHA-256) lowercase hex.
pub fn is_commit(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64)
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// HEAD's commit in the current directory's work tree, if there is one.
pub async fn head() -> Option<String> {
    let found = match std::env::current_dir() {
        Ok(cwd) => from_files(&cwd, &|name| std::env::var_os(name).is_some()),
        Err(_) => Found::AskGit,
    };
    match found {
        Found::Commit(commit) => Some(commit),
        Found::NoCommit => None,
        Found::AskGit => from_git().await,
    }
}

/// `git rev-parse --verify --quiet HEAD` (see the module doc).
async fn from_git() -> Option<String> {
    let mut git = tokio::process::Command::new("git");
    git.args(["rev-parse", "--verify", "--quiet", "HEAD"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(GIT_TIMEOUT, git.output())
        .await
        .ok()?
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let commit = text.trim();
    is_commit(commit).then(|| commit.to_string())
}

/// What the repository's files say of HEAD.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// HEAD's commit.
    Commit(String),
    /// No work tree here, or HEAD names a branch without commits: git would
    /// say nothing either.
    NoCommit,
    /// Not settled by the plain layout: git is asked.
    AskGit,
}

/// Variables that change where git looks for the repository or how it reads
/// HEAD: with any of them set, git is asked.
const GIT_VARIABLES: [&str; 9] = [
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_COMMON_DIR",
    "GIT_OBJECT_DIRECTORY",
    "GIT_CEILING_DIRECTORIES",
    "GIT_DISCOVERY_ACROSS_FILESYSTEM",
    "GIT_NAMESPACE",
    "GIT_TEST_ASSUME_DIFFERENT_OWNER",
    // Under sudo, git takes the repository's owner to be SUDO_UID.
    "SUDO_UID",
];

/// HEAD, a ref or a `.git` file hold at most this much.
const SMALL_FILE: u64 = 4096;
/// A `packed-refs` larger than this is left to git.
const MAX_PACKED_REFS: u64 = 32 * 1024 * 1024;
/// A repository's `config` larger than this is left to git.
const MAX_CONFIG: u64 = 1024 * 1024;
/// Symbolic refs followed at most (git's own bound).
const MAX_SYMREF_DEPTH: usize = 5;

/// Unsure: git is asked.
struct Unsure;

type Check<T> = Result<T, Unsure>;

/// HEAD's commit of the work tree `cwd` (absolute) is in, from the files;
/// `is_set` says whether an environment variable is set.
pub fn from_files(cwd: &Path, is_set: &dyn Fn(&str) -> bool) -> Found {
    if !cwd.is_absolute() || GIT_VARIABLES.iter().any(|v| is_set(v)) {
        return Found::AskGit;
    }
    let resolved = discover(cwd).and_then(|repo| match repo {
        Some(repo) => repo.head(),
        None => Ok(None),
    });
    match resolved {
        Ok(Some(commit)) => Found::Commit(commit),
        Ok(None) => Found::NoCommit,
        Err(Unsure) => Found::AskGit,
    }
}

/// A repository found from a work tree.
struct Repo {
    /// The work tree's own git folder (HEAD, per-work-tree refs).
    git_dir: PathBuf,
    /// The folder shared by all work trees (refs, packed-refs, config).
    common_dir: PathBuf,
}

/// Looks for `.git` upwards from `cwd` as git does: the first folder holding a
/// valid one wins, an invalid `.git` folder is passed over, the search stops
/// at `/` and where the file system changes.
fn discover(cwd: &Path) -> Check<Option<Repo>> {
    let euid = rustix::process::geteuid().as_raw();
    let device = std::fs::metadata(cwd).map_err(|_| Unsure)?.dev();
    let mut dir = cwd;
    loop {
        let dot_git = dir.join(".git");
        match std::fs::metadata(&dot_git) {
            Ok(meta) if meta.is_file() => {
                let git_dir = read_gitfile(&dot_git, dir)?;
                let common_dir = git_directory(&git_dir)?.ok_or(Unsure)?;
                owned(dir, euid)?;
                owned(&dot_git, euid)?;
                owned(&git_dir, euid)?;
                return Ok(Some(Repo {
                    git_dir,
                    common_dir,
                }));
            }
            Ok(meta) if meta.is_dir() => {
                if let Some(common_dir) = git_directory(&dot_git)? {
                    owned(dir, euid)?;
                    owned(&dot_git, euid)?;
                    return Ok(Some(Repo {
                        git_dir: dot_git,
                        common_dir,
                    }));
                }
            }
            Ok(_) => return Err(Unsure),
            Err(e) if is_absent(&e) => {}
            Err(_) => return Err(Unsure),
        }
        // A bare repository, or a folder inside a git folder.
        if git_directory(dir)?.is_some() {
            return Err(Unsure);
        }
        let Some(parent) = dir.parent() else {
            return Ok(None);
        };
        if std::fs::metadata(parent).map_err(|_| Unsure)?.dev() != device {
            return Ok(None);
        }
        dir = parent;
    }
}

/// No such file, or a file where a folder was expected on the way.
fn is_absent(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error())
}

/// Git reads a repository whose folders are not the caller's only when told
/// it is safe (`safe.directory`): that is git's to decide.
fn owned(path: &Path, euid: u32) -> Check<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.uid() == euid => Ok(()),
        _ => Err(Unsure),
    }
}

/// The git folder a `.git` file in `work_tree` points to (`gitdir: PATH`).
fn read_gitfile(dot_git: &Path, work_tree: &Path) -> Check<PathBuf> {
    let bytes = read_small(dot_git, SMALL_FILE)?.ok_or(Unsure)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| Unsure)?;
    let target = text
        .strip_prefix("gitdir:")
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.contains('\n'))
        .ok_or(Unsure)?;
    Ok(work_tree.join(target))
}

/// Whether `dir` is a git folder as git checks one (a valid HEAD, `objects`
/// and `refs` in its common folder): its common folder if so.
fn git_directory(dir: &Path) -> Check<Option<PathBuf>> {
    let head = dir.join("HEAD");
    match std::fs::symlink_metadata(&head) {
        Ok(meta) if meta.file_type().is_symlink() => return Err(Unsure),
        Ok(_) => {}
        Err(e) if is_absent(&e) => return Ok(None),
        Err(_) => return Err(Unsure),
    }
    let Some(bytes) = read_small(&head, SMALL_FILE)? else {
        return Ok(None);
    };
    // Git passes over a folder whose HEAD it does not take; what this code
    // does not take (upper-case hex, odd spacing) is left to git.
    if parse_ref_file(&bytes).is_none() {
        return Err(Unsure);
    }
    let common = match read_small(&dir.join("commondir"), SMALL_FILE)? {
        Some(bytes) => {
            let text = std::str::from_utf8(&bytes).map_err(|_| Unsure)?;
            let text = text.trim_end_matches(['\n', '\r']);
            if text.is_empty() || text.contains('\n') {
                return Err(Unsure);
            }
            dir.join(text)
        }
        None => dir.to_path_buf(),
    };
    let is_dir = |p: PathBuf| std::fs::metadata(p).is_ok_and(|m| m.is_dir());
    if !is_dir(common.join("objects")) || !is_dir(common.join("refs")) {
        return Ok(None);
    }
    Ok(Some(common))
}

/// What a HEAD or a loose ref holds.
#[derive(Debug, PartialEq, Eq)]
enum RefFile<'a> {
    /// `ref: NAME`.
    Symbolic(&'a str),
    /// A commit (or another object: git does not check).
    Direct(&'a str),
}

fn parse_ref_file(bytes: &[u8]) -> Option<RefFile<'_>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let text = text.trim_end_matches(['\n', '\r', ' ', '\t']);
    if let Some(name) = text.strip_prefix("ref:") {
        let name = name.trim_start_matches([' ', '\t']);
        return name.starts_with("refs/").then_some(RefFile::Symbolic(name));
    }
    is_commit(text).then_some(RefFile::Direct(text))
}

/// A ref name safe to join to a folder (git's rules, the ones that matter
/// here: no `..`, no empty, hidden or `.lock` part, no odd characters).
fn is_plain_ref_name(name: &str) -> bool {
    name.starts_with("refs/")
        && !name.ends_with('/')
        && !name.ends_with(".lock")
        && !name.contains("..")
        && !name.contains("//")
        && !name.contains("/.")
        && !name.contains("@{")
        && name.bytes().all(|b| {
            b > b' ' && b != 0x7f && !matches!(b, b'~' | b'^' | b':' | b'?' | b'*' | b'[' | b'\\')
        })
        && Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

impl Repo {
    /// HEAD's commit; `None` for a branch without commits.
    fn head(&self) -> Check<Option<String>> {
        self.plain_refs()?;
        let bytes = read_small(&self.git_dir.join("HEAD"), SMALL_FILE)?.ok_or(Unsure)?;
        let mut name = match parse_ref_file(&bytes).ok_or(Unsure)? {
            RefFile::Direct(commit) => return Ok(Some(commit.to_string())),
            RefFile::Symbolic(name) => name.to_string(),
        };
        for _ in 0..MAX_SYMREF_DEPTH {
            if !is_plain_ref_name(&name) {
                return Err(Unsure);
            }
            let per_work_tree = ["refs/bisect/", "refs/worktree/", "refs/rewritten/"]
                .iter()
                .any(|p| name.starts_with(p));
            let base = if per_work_tree {
                &self.git_dir
            } else {
                &self.common_dir
            };
            let Some(bytes) = read_small(&base.join(&name), SMALL_FILE)? else {
                return self.packed(&name);
            };
            match parse_ref_file(&bytes).ok_or(Unsure)? {
                RefFile::Direct(commit) => return Ok(Some(commit.to_string())),
                RefFile::Symbolic(next) => name = next.to_string(),
            }
        }
        Err(Unsure)
    }

    /// Refs kept as files, in a repository git reads as this code does: no
    /// reftable (its HEAD names `refs/heads/.invalid`, refused by
    /// [`is_plain_ref_name`]), no extension in its `config`.
    fn plain_refs(&self) -> Check<()> {
        if std::fs::symlink_metadata(self.common_dir.join("reftable")).is_ok() {
            return Err(Unsure);
        }
        if let Some(config) = read_small(&self.common_dir.join("config"), MAX_CONFIG)? {
            let lower = config.to_ascii_lowercase();
            if memchr::memmem::find(&lower, b"extensions").is_some() {
                return Err(Unsure);
            }
        }
        Ok(())
    }

    /// `name`'s commit from `packed-refs`; `None` when it is not there.
    fn packed(&self, name: &str) -> Check<Option<String>> {
        let Some(bytes) = read_small(&self.common_dir.join("packed-refs"), MAX_PACKED_REFS)? else {
            return Ok(None);
        };
        for line in bytes.split(|&b| b == b'\n') {
            if line.first().is_some_and(|&b| b == b'#' || b == b'^') {
                continue;
            }
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(at) = memchr::memchr(b' ', line) else {
                continue;
            };
            if &line[at + 1..] == name.as_bytes() {
                let commit = std::str::from_utf8(&line[..at]).map_err(|_| Unsure)?;
                return if is_commit(commit) {
                    Ok(Some(commit.to_string()))
                } else {
                    Err(Unsure)
                };
            }
        }
        Ok(None)
    }
}

/// The bytes of the regular file at `path` (`None` when there is none), read
/// without following a symlink at its last step or waiting on a FIFO; one over
/// `cap` bytes, a symlink or anything but a regular file is unsure.
fn read_small(path: &Path, cap: u64) -> Check<Option<Vec<u8>>> {
    let fd = match rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => return Ok(None),
        Err(_) => return Err(Unsure),
    };
    let stat = rustix::fs::fstat(&fd).map_err(|_| Unsure)?;
    if rustix::fs::FileType::from_raw_mode(stat.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(Unsure);
    }
    let mut bytes = Vec::new();
    File::from(fd)
        .take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(|_| Unsure)?;
    if bytes.len() as u64 > cap {
        return Err(Unsure);
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123456789abcdef01234567";
    const B: &str = "89abcdef0123456789abcdef0123456789abcdef";

    fn none_set(_: &str) -> bool {
        false
    }

    /// A work tree at `dir/repo` with an empty git folder (objects, refs) and
    /// `head` as HEAD; returns the work tree.
    fn repo(dir: &Path, head: &str) -> PathBuf {
        let work = dir.join("repo");
        let git = work.join(".git");
        std::fs::create_dir_all(git.join("objects")).unwrap();
        std::fs::create_dir_all(git.join("refs/heads")).unwrap();
        std::fs::write(git.join("HEAD"), head).unwrap();
        std::fs::write(git.join("config"), "[core]\n\tbare = false\n").unwrap();
        work
    }

    #[test]
    fn only_commit_hashes_are_commits() {
        assert!(is_commit(&"a".repeat(40)));
        assert!(is_commit(&"0123456789abcdef".repeat(4)));
        for s in [
            "",
            "HEAD",
            &"A".repeat(40),
            &"a".repeat(39),
            &"g".repeat(40),
        ] {
            assert!(!is_commit(s), "{s}");
        }
    }

    #[test]
    fn a_detached_head_is_its_commit_from_any_folder_below() {
        let dir = tempfile::tempdir().unwrap();
        let work = repo(dir.path(), &format!("{A}\n"));
        let deep = work.join("src/deeper");
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(from_files(&work, &none_set), Found::Commit(A.into()));
        assert_eq!(from_files(&deep, &none_set), Found::Commit(A.into()));
    }

    #[test]
    fn a_branch_is_read_from_its_loose_ref_before_packed_refs() {
        let dir = tempfile::tempdir().unwrap();
        let work = repo(dir.path(), "ref: refs/heads/main\n");
        let git = work.join(".git");
        assert_eq!(
            from_files(&work, &none_set),
            Found::NoCommit,
            "a branch without commits"
        );
        std::fs::write(
            git.join("packed-refs"),
            format!("# pack-refs with: peeled fully-peeled sorted \n{B} refs/heads/main\n^{A}\n"),
        )
        .unwrap();
        assert_eq!(from_files(&work, &none_set), Found::Commit(B.into()));
        std::fs::write(git.join("refs/heads/main"), format!("{A}\n")).unwrap();
        assert_eq!(from_files(&work, &none_set), Found::Commit(A.into()));
    }

    #[test]
    fn a_branch_only_in_packed_refs_and_a_symbolic_ref_are_followed() {
        let dir = tempfile::tempdir().unwrap();
        let work = repo(dir.path(), "ref: refs/heads/alias\n");
        let git = work.join(".git");
        std::fs::write(git.join("refs/heads/alias"), "ref: refs/heads/feature/x\n").unwrap();
        std::fs::write(
            git.join("packed-refs"),
            format!("{A} refs/heads/feature\n{B} refs/heads/feature/x\n"),
        )
        .unwrap();
        assert_eq!(from_files(&work, &none_set), Found::Commit(B.into()));
    }

    #[test]
    fn a_linked_work_tree_reads_its_own_head_and_the_common_refs() {
        let dir = tempfile::tempdir().unwrap();
        let main = repo(dir.path(), "ref: refs/heads/main\n");
        let common = main.join(".git");
        std::fs::write(common.join("refs/heads/main"), format!("{A}\n")).unwrap();
        std::fs::write(common.join("refs/heads/topic"), format!("{B}\n")).unwrap();
        let own = common.join("worktrees/wt");
        std::fs::create_dir_all(&own).unwrap();
        std::fs::write(own.join("HEAD"), "ref: refs/heads/topic\n").unwrap();
        std::fs::write(own.join("commondir"), "../..\n").unwrap();
        let wt = dir.path().join("wt");
        std::fs::create_dir_all(wt.join("sub")).unwrap();
        std::fs::write(wt.join(".git"), format!("gitdir: {}\n", own.display())).unwrap();
        assert_eq!(
            from_files(&wt.join("sub"), &none_set),
            Found::Commit(B.into())
        );
        // A relative gitdir is relative to the work tree.
        std::fs::write(wt.join(".git"), "gitdir: ../repo/.git/worktrees/wt\n").unwrap();
        assert_eq!(from_files(&wt, &none_set), Found::Commit(B.into()));
        // A gitdir that is no git folder is git's to report.
        std::fs::write(wt.join(".git"), "gitdir: /nonexistent/wt\n").unwrap();
        assert_eq!(from_files(&wt, &none_set), Found::AskGit);
    }

    #[test]
    fn outside_a_work_tree_there_is_no_commit() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(from_files(dir.path(), &none_set), Found::NoCommit);
        // A `.git` folder that is no repository is passed over, as git does.
        std::fs::create_dir_all(dir.path().join("x/.git")).unwrap();
        assert_eq!(
            from_files(&dir.path().join("x"), &none_set),
            Found::NoCommit
        );
    }

    #[test]
    fn what_the_plain_layout_does_not_settle_is_left_to_git() {
        let dir = tempfile::tempdir().unwrap();
        let work = repo(dir.path(), "ref: refs/heads/main\n");
        let git = work.join(".git");
        std::fs::write(git.join("refs/heads/main"), format!("{A}\n")).unwrap();
        assert_eq!(from_files(&work, &none_set), Found::Commit(A.into()));
        // A variable steering git's discovery.
        assert_eq!(from_files(&work, &|v| v == "GIT_DIR"), Found::AskGit);
        // A relative start.
        assert_eq!(from_files(Path::new("repo"), &none_set), Found::AskGit);
        // Repository extensions (a reftable, another object format).
        std::fs::write(
            git.join("config"),
            "[core]\n\trepositoryformatversion = 1\n[extensions]\n\trefStorage = reftable\n",
        )
        .unwrap();
        assert_eq!(from_files(&work, &none_set), Found::AskGit);
        std::fs::write(git.join("config"), "").unwrap();
        // A ref that is a symlink, a FIFO or garbage.
        std::fs::remove_file(git.join("refs/heads/main")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", git.join("refs/heads/main")).unwrap();
        assert_eq!(from_files(&work, &none_set), Found::AskGit);
        std::fs::remove_file(git.join("refs/heads/main")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            git.join("refs/heads/main"),
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert_eq!(
            from_files(&work, &none_set),
            Found::AskGit,
            "a FIFO is not waited on"
        );
        std::fs::remove_file(git.join("refs/heads/main")).unwrap();
        std::fs::write(git.join("refs/heads/main"), "not a hash\n").unwrap();
        assert_eq!(from_files(&work, &none_set), Found::AskGit);
        // A ref name that would leave the git folder.
        std::fs::write(git.join("HEAD"), "ref: refs/../../../etc/passwd\n").unwrap();
        assert_eq!(from_files(&work, &none_set), Found::AskGit);
        // A bare repository.
        let bare = dir.path().join("bare.git");
        std::fs::create_dir_all(bare.join("objects")).unwrap();
        std::fs::create_dir_all(bare.join("refs")).unwrap();
        std::fs::write(bare.join("HEAD"), format!("{A}\n")).unwrap();
        assert_eq!(from_files(&bare, &none_set), Found::AskGit);
    }

    #[test]
    fn the_files_say_what_git_says_in_a_real_repository() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("repo");
        std::fs::create_dir_all(&work).unwrap();
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .current_dir(&work)
                .args(["-c", "user.name=wisp", "-c", "user.email=wisp@example.com"])
                .args(args)
                .stderr(Stdio::null())
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        if git(&["init", "-q"]).is_none() {
            return; // no git here: the cases above stand for it
        }
        assert_eq!(
            from_files(&work, &none_set),
            Found::NoCommit,
            "no commit yet"
        );
        for step in ["loose", "packed", "detached"] {
            git(&["commit", "-q", "--allow-empty", "-m", step]).unwrap();
            match step {
                "packed" => {
                    let _ = git(&["pack-refs", "--all"]);
                }
                "detached" => {
                    let _ = git(&["checkout", "-q", "--detach"]);
                }
                _ => {}
            }
            let expected = git(&["rev-parse", "--verify", "HEAD"]).unwrap();
            assert_eq!(
                from_files(&work, &none_set),
                Found::Commit(expected),
                "{step}"
            );
        }
        // A linked work tree on a branch of its own.
        let linked = dir.path().join("linked");
        git(&[
            "worktree",
            "add",
            "-q",
            "-b",
            "side",
            &linked.display().to_string(),
        ])
        .unwrap();
        let expected = std::process::Command::new("git")
            .current_dir(&linked)
            .args(["rev-parse", "--verify", "HEAD"])
            .output()
            .unwrap();
        let expected = String::from_utf8_lossy(&expected.stdout).trim().to_string();
        assert!(is_commit(&expected), "{expected}");
        assert_eq!(from_files(&linked, &none_set), Found::Commit(expected));
    }
}
