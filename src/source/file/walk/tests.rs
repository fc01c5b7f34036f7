use std::collections::BTreeSet;
use std::os::unix::fs::symlink;

use super::*;

fn globs(patterns: &[String], follow: bool) -> Arc<Globs> {
    Arc::new(Globs::new([(patterns, follow)]).unwrap())
}

fn walker(patterns: &[String], follow: bool, limits: Limits) -> Walker {
    Walker::new(globs(patterns, follow), None, limits)
}

/// The paths of one walk's matches, relative to `base`.
fn paths(w: &Walked, base: &Path) -> BTreeSet<String> {
    w.found
        .iter()
        .map(|f| f.path.strip_prefix(base).unwrap().display().to_string())
        .collect()
}

/// Sweeps until a sweep ends (at most `max` walks); returns every match seen
/// and how many walks it took.
fn sweep(w: &mut Walker, base: &Path, max: usize) -> (BTreeSet<String>, usize) {
    let stop = AtomicBool::new(false);
    let mut all = BTreeSet::new();
    for n in 1..=max {
        let walked = w.walk(&Request::Sweep, &stop);
        all.extend(paths(&walked, base));
        if let Scope::Sweep { done: true } = walked.scope {
            return (all, n);
        }
    }
    panic!("no sweep ended in {max} walks");
}

fn touch(p: &Path) {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(p, b"x\n").unwrap();
}

fn pattern(base: &Path, rest: &str) -> String {
    format!("{}/{rest}", base.display())
}

#[test]
fn without_symlinks_it_finds_what_glob_finds() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path();
    for f in [
        "top.log",
        "top.txt",
        ".hidden.log",
        "a/x.log",
        "a/b/y.log",
        "a/b/c/z.log",
        ".git/objects/o.log",
        "home/alice/logs/app.log",
        "home/alice/logs/deep/no.log",
        "home/alice/other/no.log",
        "home/bob/logs/api.log",
        "home/carol/app.log",
        "m/x1/n.log",
        "m/y2/n.log",
    ] {
        touch(&b.join(f));
    }
    std::fs::create_dir_all(b.join("a/empty.log")).unwrap();
    for rest in [
        "**/*.log",
        "*.log",
        "home/*/logs/*.log",
        "home/**/app.log",
        "a/**",
        "a/**/b/*.log",
        "[am]/*/*.log",
        "m/?1/n.log",
        "top.log",
        "nowhere/*.log",
    ] {
        let p = vec![pattern(b, rest)];
        let want: BTreeSet<String> = glob::glob(&p[0])
            .unwrap()
            .flatten()
            .filter(|p| p.is_file())
            .map(|p| p.strip_prefix(b).unwrap().display().to_string())
            .collect();
        let (got, walks) = sweep(&mut walker(&p, false, Limits::DEFAULT), b, 1);
        assert_eq!(got, want, "{rest}");
        assert_eq!(walks, 1);
    }
}

#[test]
fn a_symlink_to_a_folder_is_not_followed_unless_the_entry_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let (b, elsewhere) = (dir.path().join("tree"), dir.path().join("elsewhere"));
    touch(&b.join("own/x.log"));
    touch(&elsewhere.join("y.log"));
    symlink(&elsewhere, b.join("u")).unwrap();
    // A link to a file is a match: the open's owner rules decide on it.
    symlink(elsewhere.join("y.log"), b.join("own/link.log")).unwrap();
    let p = vec![pattern(&b, "**/*.log")];
    let (got, _) = sweep(&mut walker(&p, false, Limits::DEFAULT), &b, 1);
    assert_eq!(
        got,
        BTreeSet::from(["own/link.log".into(), "own/x.log".into()])
    );
    let stop = AtomicBool::new(false);
    let walked = walker(&p, false, Limits::DEFAULT).walk(&Request::Sweep, &stop);
    assert_eq!(walked.link_not_followed, Some((b.join("u"), 0)));
    let (got, _) = sweep(&mut walker(&p, true, Limits::DEFAULT), &b, 1);
    assert_eq!(
        got,
        BTreeSet::from(["own/link.log".into(), "own/x.log".into(), "u/y.log".into()])
    );
}

/// Issue 22: `ln -s . a; ln -s . b` under a `**` stopped all tailing, and
/// `a -> .` alone made `tree/a/a/…/x.log` of `tree/x.log`.
#[test]
fn links_to_the_folder_itself_make_no_loop_followed_or_not() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path();
    touch(&b.join("x.log"));
    touch(&b.join("sub/y.log"));
    symlink(".", b.join("a")).unwrap();
    symlink(".", b.join("sub/b")).unwrap();
    symlink("..", b.join("sub/up")).unwrap();
    let p = vec![pattern(b, "**/*.log")];
    for follow in [false, true] {
        let (got, walks) = sweep(&mut walker(&p, follow, Limits::DEFAULT), b, 1);
        assert_eq!(
            got,
            BTreeSet::from(["sub/y.log".into(), "x.log".into()]),
            "{follow}"
        );
        assert_eq!(walks, 1);
    }
}

#[test]
fn a_cut_sweep_goes_on_where_it_stopped_and_reaches_every_folder() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path();
    let mut want = BTreeSet::new();
    // 15 folders of 3: each folder fits the bound (a larger one is read up to
    // it), the tree does not.
    for i in 0..15 {
        for j in 0..3 {
            let f = format!("d{i:02}/e{j}/f.log");
            touch(&b.join(&f));
            want.insert(f);
        }
    }
    let p = vec![pattern(b, "**/*.log")];
    let limits = Limits {
        entries: 20,
        ..Limits::DEFAULT
    };
    let mut w = walker(&p, false, limits);
    let (got, walks) = sweep(&mut w, b, 100);
    assert_eq!(got, want);
    assert!(walks > 3, "{walks} walks");
    // The next sweep starts from the top again.
    let stop = AtomicBool::new(false);
    let first = w.walk(&Request::Sweep, &stop);
    assert!(first.reached.entries);
    assert!(
        paths(&first, b).contains("d00/e0/f.log"),
        "{:?}",
        paths(&first, b)
    );
}

#[test]
fn a_folder_larger_than_the_bound_is_read_up_to_it() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path();
    for i in 0..30 {
        touch(&b.join(format!("f{i:02}.log")));
    }
    let p = vec![pattern(b, "*.log")];
    let limits = Limits {
        entries: 20,
        ..Limits::DEFAULT
    };
    let stop = AtomicBool::new(false);
    let walked = walker(&p, false, limits).walk(&Request::Sweep, &stop);
    assert_eq!(walked.found.len(), 20);
    assert!(walked.reached.entries);
    assert!(matches!(walked.scope, Scope::Sweep { done: true }));
}

#[test]
fn folders_too_deep_are_left_out_and_said_so() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path();
    touch(&b.join("1/2/3/ok.log"));
    touch(&b.join("1/2/3/4/5/deep.log"));
    let p = vec![pattern(b, "**/*.log")];
    let limits = Limits {
        depth: 3,
        ..Limits::DEFAULT
    };
    let stop = AtomicBool::new(false);
    let walked = walker(&p, false, limits).walk(&Request::Sweep, &stop);
    assert_eq!(paths(&walked, b), BTreeSet::from(["1/2/3/ok.log".into()]));
    assert!(walked.reached.depth);
}

#[test]
fn a_cancelled_walk_stops_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path();
    for i in 0..50 {
        touch(&b.join(format!("d{i}/x.log")));
    }
    let p = vec![pattern(b, "**/*.log")];
    let stop = AtomicBool::new(true);
    let walked = walker(&p, false, Limits::DEFAULT).walk(&Request::Sweep, &stop);
    assert!(walked.found.is_empty());
    assert!(matches!(walked.scope, Scope::Sweep { done: false }));
}

#[test]
fn a_near_walk_looks_at_the_name_an_event_gave_and_what_is_below_it() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path();
    touch(&b.join("new/deeper/x.log"));
    touch(&b.join("other/y.log"));
    let p = vec![pattern(b, "**/*.log")];
    let g = globs(&p, false);
    let st = rustix::fs::stat(b).unwrap();
    let target = Target {
        dir: b.to_path_buf(),
        id: (st.st_dev, st.st_ino),
        depth: depth_of(b),
        states: g.roots[0].states.clone(),
        name: Some("new".into()),
    };
    let stop = AtomicBool::new(false);
    let walked = Walker::new(g, None, Limits::DEFAULT).walk(&Request::Near(vec![target]), &stop);
    assert_eq!(
        paths(&walked, b),
        BTreeSet::from(["new/deeper/x.log".into()])
    );
    assert!(matches!(&walked.scope, Scope::Near(s) if s == &[b.join("new")]));
}

#[test]
fn special_files_matched_are_reported_not_found() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path();
    rustix::fs::mkfifoat(CWD, b.join("pipe.log"), Mode::from_raw_mode(0o600)).unwrap();
    symlink("nowhere", b.join("dangling.log")).unwrap();
    touch(&b.join("ok.log"));
    let p = vec![pattern(b, "*.log")];
    let stop = AtomicBool::new(false);
    let walked = walker(&p, false, Limits::DEFAULT).walk(&Request::Sweep, &stop);
    assert_eq!(paths(&walked, b), BTreeSet::from(["ok.log".into()]));
    assert_eq!(walked.problems.len(), 1, "{:?}", walked.problems);
    assert!(walked.problems[0].1.contains("it is a FIFO"));
}
