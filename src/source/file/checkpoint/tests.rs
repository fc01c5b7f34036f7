//! Unit tests of the checkpoint store: resume, replacement, pruning, the file format.

use super::*;

fn id(inode: u64) -> FileId {
    FileId { dev: 1, inode }
}

#[test]
fn acks_advance_only_over_an_unbroken_prefix() {
    let c = Commits::new(10);
    let mut c = lock(&c);
    let a = c.register(20);
    let b = c.register(30);
    let d = c.register(40);
    c.ack(b.0, b.1);
    assert_eq!(c.committed(), 10, "batch a is not acknowledged yet");
    c.ack(a.0, a.1);
    assert_eq!(c.committed(), 30);
    c.ack(d.0, d.1);
    assert_eq!(c.committed(), 40);
    assert_eq!(c.outstanding(), 0);
}

#[test]
fn a_dropped_ack_holds_the_checkpoint_back_and_is_not_waited_for() {
    let c = Commits::new(0);
    let a = AckTicket::register(&c, 10);
    let b = AckTicket::register(&c, 20);
    drop(a);
    b.ack();
    let g = lock(&c);
    assert_eq!(g.committed(), 0);
    assert_eq!(g.outstanding(), 0);
}

#[test]
fn acks_from_before_a_truncation_are_ignored() {
    let c = Commits::new(0);
    let mut c = lock(&c);
    let a = c.register(500);
    c.reset(0);
    c.ack(a.0, a.1);
    assert_eq!(c.committed(), 0);
    let b = c.register(7);
    c.ack(b.0, b.1);
    assert_eq!(c.committed(), 7);
}

#[test]
fn positions_survive_a_save_and_load() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, err) = CheckpointStore::load(dir.path());
    assert!(err.is_none());
    s.put(id(5), Path::new("/x.log"), Fingerprint::of_bytes(b"ab"), 42);
    s.save().unwrap();
    let (s2, err) = CheckpointStore::load(dir.path());
    assert!(err.is_none());
    assert_eq!(s2.get(id(5)).map(|c| c.offset), Some(42));
}

#[test]
fn a_positions_file_over_the_cap_is_kept_aside_unread_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(POSITIONS_FILE);
    File::create(&p)
        .unwrap()
        .set_len(MAX_POSITIONS_BYTES + 1)
        .unwrap();
    let (s, err) = CheckpointStore::load(dir.path());
    let msg = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        msg.contains("is corrupt") && msg.contains("more than"),
        "{msg}"
    );
    let kept = dir.path().join("positions.json.corrupt");
    assert_eq!(fs::metadata(kept).unwrap().len(), MAX_POSITIONS_BYTES + 1);
    s.save().unwrap();
    assert!(CheckpointStore::load(dir.path()).1.is_none());
}

#[test]
fn a_corrupt_positions_file_is_kept_aside_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(POSITIONS_FILE), b"{\"version\":1,\"fil").unwrap();
    let (s, err) = CheckpointStore::load(dir.path());
    let msg = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("positions.json"), "{msg}");
    assert!(dir.path().join("positions.json.corrupt").exists());
    s.save().unwrap();
    assert!(CheckpointStore::load(dir.path()).1.is_none());
}

#[test]
fn a_file_at_its_old_path_on_a_renumbered_device_resumes_by_fingerprint() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.log");
    fs::write(&p, b"first line\nsecond\n").unwrap();
    let f = File::open(&p).unwrap();
    let (mut s, _) = CheckpointStore::load(dir.path());
    s.put(id(1), &p, Fingerprint::of_file(&f).unwrap(), 11);
    let renumbered = FileId { dev: 9, inode: 1 };
    assert_eq!(s.lookup(renumbered, &p, &f), Known::Resume { offset: 11 });
    assert_eq!(s.lookup(renumbered, &p, &f), Known::Resume { offset: 11 });
    assert!(s.get(id(1)).is_none());
}

#[test]
fn a_new_inode_at_the_old_path_that_starts_alike_does_not_inherit_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.log");
    fs::write(&p, b"same banner\n").unwrap();
    let f = File::open(&p).unwrap();
    let (mut s, _) = CheckpointStore::load(dir.path());
    s.put(id(1), &p, Fingerprint::of_file(&f).unwrap(), 11);
    assert_eq!(s.lookup(id(2), &p, &f), Known::Replaced);
}

#[test]
fn a_new_file_at_a_known_path_replaced_the_one_followed_there() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.log");
    fs::write(&p, b"written after the rotation\n").unwrap();
    let f = File::open(&p).unwrap();
    let (mut s, _) = CheckpointStore::load(dir.path());
    s.put(id(1), &p, Fingerprint::of_bytes(b"the old file\n"), 13);
    assert_eq!(s.lookup(id(2), &p, &f), Known::Replaced);
}

#[test]
fn the_spools_resume_points_win_over_positions_and_keep_when_last_seen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = CheckpointStore::load(dir.path());
    let fp = Fingerprint::of_bytes(b"first line\n");
    s.put(id(1), Path::new("/a.log"), fp, 100);
    s.entries.get_mut(&id(1)).unwrap().seen = 7;
    let mut state = ResumeState::new();
    for p in [
        resume_point(id(1), Path::new("/a.log"), fp, 250),
        resume_point(id(2), Path::new("/b.log"), fp, 9),
    ] {
        state.insert(p.key, p.state.unwrap());
    }
    // A point of another format is passed over.
    state.insert(b"short".to_vec(), vec![1, 2, 3]);
    assert_eq!(s.apply_resume(&state), 2);
    let a = s.get(id(1)).unwrap();
    assert_eq!((a.offset, a.seen), (250, 7));
    assert_eq!(s.get(id(2)).map(|c| c.offset), Some(9));
    assert_eq!(s.apply_resume(&state), 0, "nothing moves twice");
}

#[test]
fn a_reused_inode_with_other_content_is_changed() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.log");
    fs::write(&p, b"new content\n").unwrap();
    let f = File::open(&p).unwrap();
    let (mut s, _) = CheckpointStore::load(dir.path());
    s.put(id(1), &p, Fingerprint::of_bytes(b"old content\n"), 12);
    assert_eq!(
        s.lookup(id(1), &p, &f),
        Known::Changed {
            was: Fingerprint::of_bytes(b"old content\n"),
            offset: 12
        }
    );
}

#[test]
fn once_the_spool_holds_a_files_point_positions_adds_only_when_each_was_last_seen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = CheckpointStore::load(dir.path());
    let fp = Fingerprint::of_bytes(b"first line\n");
    // Forgotten by the spool (deleted and fully handed on) before the crash
    // that kept positions.json from saying so too.
    s.put(id(3), Path::new("/gone.log"), fp, 40);
    let mut state = ResumeState::new();
    let p = resume_point(id(1), Path::new("/a.log"), fp, 250);
    state.insert(p.key, p.state.unwrap());
    assert!(holds_file_points(&state));
    assert_eq!(s.apply_resume(&state), 1);
    assert_eq!(s.get(id(1)).map(|c| c.offset), Some(250));
    assert!(
        !s.knows(id(3)),
        "the spool is the truth: {:?}",
        s.get(id(3))
    );
}

#[test]
fn a_spool_without_file_points_is_handed_what_positions_says() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = CheckpointStore::load(dir.path());
    let fp = Fingerprint::of_bytes(b"first line\n");
    s.put(id(1), Path::new("/a.log"), fp, 100);
    let mut state = ResumeState::new();
    // An exec run's point only.
    state.insert(vec![7; 40], vec![1; 24]);
    assert!(!holds_file_points(&state));
    assert_eq!(s.apply_resume(&state), 0);
    assert_eq!(s.get(id(1)).map(|c| c.offset), Some(100));
    let mut handed = ResumeState::new();
    for p in s.points() {
        handed.insert(p.key, p.state.unwrap());
    }
    let (mut fresh, _) = CheckpointStore::load(tempfile::tempdir().unwrap().path());
    assert_eq!(fresh.apply_resume(&handed), 1);
    assert_eq!(
        fresh.get(id(1)).map(|c| (c.offset, c.fingerprint)),
        Some((100, fp))
    );
}
