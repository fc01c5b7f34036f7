//! The system-wide parsers on files captured from a real VM
//! (`tests/fixtures/proc/`) and on odd text.

use super::*;

// Captured from a 2-CPU VM (Linux 6.x); see tests/fixtures/proc/.
const STAT: &str = include_str!("../../../tests/fixtures/proc/stat");
const LOADAVG: &str = include_str!("../../../tests/fixtures/proc/loadavg");
const MEMINFO: &str = include_str!("../../../tests/fixtures/proc/meminfo");
const UPTIME: &str = include_str!("../../../tests/fixtures/proc/uptime");
const DISKSTATS: &str = include_str!("../../../tests/fixtures/proc/diskstats");
const NET_DEV: &str = include_str!("../../../tests/fixtures/proc/net_dev");
const MOUNTS: &str = include_str!("../../../tests/fixtures/proc/mounts");

#[test]
fn stat_gives_the_total_cpu_times_the_cpu_count_and_boot() {
    let s = parse_stat(STAT).unwrap();
    assert_eq!(
        s.total,
        CpuTimes {
            user: 313235,
            nice: 25583,
            system: 59160,
            idle: 169683,
            iowait: 2232,
            irq: 0,
            softirq: 447,
            steal: 143,
        }
    );
    assert_eq!(s.logical_cpus, 2);
    assert_eq!(s.boot_time, Some(1795945397));
}

#[test]
fn an_old_or_odd_stat_is_read_as_far_as_it_goes() {
    // Before 2.6.11: four columns only.
    let s = parse_stat("cpu 1 2 3 4\ncpu0 1 2 3 4\n").unwrap();
    assert_eq!(s.total.idle, 4);
    assert_eq!(s.total.steal, 0);
    assert_eq!(s.boot_time, None);
    for odd in [
        "",
        "cpu\n",
        "cpu 1 2 x 4\n",
        "intr 1 2\nbtime 5\n",
        "cpu 1 2 3\n",
    ] {
        assert_eq!(parse_stat(odd), None, "{odd:?}");
    }
}

#[test]
fn loadavg_and_uptime() {
    assert_eq!(parse_loadavg(LOADAVG), Some([1.55, 1.73, 2.44]));
    assert_eq!(parse_uptime(UPTIME), Some(2865.22));
    for odd in ["", "1.0 2.0", "a b c", "-1 0 0", "NaN 1 1"] {
        assert_eq!(parse_loadavg(odd), None, "{odd:?}");
    }
    for odd in ["", "x", "-5 1", "inf"] {
        assert_eq!(parse_uptime(odd), None, "{odd:?}");
    }
}

#[test]
fn meminfo_is_read_in_bytes() {
    let m = parse_meminfo(MEMINFO).unwrap();
    assert_eq!(m.total, 24684092 * 1024);
    assert_eq!(m.free, 5974192 * 1024);
    assert_eq!(m.available, Some(23835116 * 1024));
    assert_eq!(m.buffers, 57920 * 1024);
    assert_eq!(m.cached, 17555920 * 1024);
    assert_eq!(m.swap_total, 0);
    assert_eq!(parse_meminfo("MemFree: 10 kB\n"), None);
    assert_eq!(parse_meminfo("MemTotal: 0 kB\n"), None);
    assert_eq!(parse_meminfo("garbage\n\n:::\nMemTotal: x kB\n"), None);
}

#[test]
fn mounts_keep_real_local_filesystems_once() {
    let m = parse_mounts(MOUNTS);
    assert_eq!(
        m,
        vec![Mount {
            device: "/dev/vda".into(),
            mountpoint: "/".into(),
            fstype: "ext4".into(),
            read_only: false,
        }]
    );
    let text = "/dev/sda1 /mnt/my\\040disk ext4 ro,relatime 0 0\n\
                rpool/home /home zfs rw 0 0\n\
                overlay /var/lib/docker/x overlay rw 0 0\n\
                host:/export /nfs nfs4 rw 0 0\n\
                /dev/loop3 /snap/core/1 squashfs ro 0 0\n\
                /dev/fuse /f fuse.sshfs rw 0 0\n\
                short line\n";
    let m = parse_mounts(text);
    assert_eq!(m.len(), 2, "{m:?}");
    assert_eq!(m[0].mountpoint, "/mnt/my disk");
    assert!(m[0].read_only);
    assert_eq!(m[1].fstype, "zfs");
    assert_eq!(unescape_mount("a\\134b\\"), "a\\b\\");
    assert_eq!(unescape_mount("a\\999b\\77"), "a\\999b\\77");
}

#[test]
fn diskstats_skip_idle_loop_and_ram_devices() {
    let d = parse_diskstats(DISKSTATS);
    assert_eq!(
        d,
        vec![DiskStats {
            name: "vda".into(),
            reads: 517689,
            read_bytes: 22744778 * 512,
            writes: 187457,
            write_bytes: 109171136 * 512,
        }]
    );
    assert!(parse_diskstats("8 0 sda x y\n\n 8 1 sda1 1 2 3\n").is_empty());
}

#[test]
fn net_dev_skips_lo_and_idle_interfaces() {
    let n = parse_net_dev(NET_DEV).unwrap();
    assert_eq!(
        n,
        vec![NetDev {
            name: "eth0".into(),
            rx_bytes: 70244141,
            tx_bytes: 194007,
            ..Default::default()
        }]
    );
    assert_eq!(parse_net_dev(""), None);
    assert_eq!(parse_net_dev("a\nb\neth0: 1 2 3\n"), None);
}

proptest::proptest! {
    #[test]
    fn no_input_makes_a_parser_panic(text in "\\PC*(\n\\PC*){0,4}") {
        let _ = parse_stat(&text);
        let _ = parse_loadavg(&text);
        let _ = parse_uptime(&text);
        let _ = parse_meminfo(&text);
        let _ = parse_mounts(&text);
        let _ = parse_diskstats(&text);
        let _ = parse_net_dev(&text);
        let _ = unescape_mount(&text);
    }
}
