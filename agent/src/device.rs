//! What the device says about itself through `/proc` and `/sys`: model and
//! class hint, temperatures, Raspberry Pi throttling and under-voltage, and
//! Jetson GPU load. Every reader takes the filesystem root (`/` on a device,
//! a fixture directory in tests) and reports a missing or unreadable file as
//! absent (`None` or empty), never as an error: a plain x86 box has none of
//! these and is no less healthy for it.

use std::path::{Path, PathBuf};

/// The class a device's model suggests (DESIGN.md, Agent): a Raspberry Pi
/// is a local edge node, a Jetson a GPU node, anything else persistent.
pub fn class_hint(model: Option<&str>) -> &'static str {
    match model {
        Some(m) if m.contains("Raspberry Pi") => "CLASS_E_LOCAL",
        Some(m) if m.contains("Jetson") || m.contains("NVIDIA") => "CLASS_D_GPU",
        _ => "CLASS_C_PERSISTENT",
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    let raw = std::fs::read(path).ok()?;
    let s = String::from_utf8_lossy(&raw);
    Some(
        s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
            .to_owned(),
    )
    .filter(|s| !s.is_empty())
}

/// `/proc/device-tree/model` (NUL-terminated on the device).
pub fn model(root: &Path) -> Option<String> {
    read_trimmed(&root.join("proc/device-tree/model"))
}

/// One thermal zone's reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Temperature {
    /// The zone's `type` (`cpu-thermal`, `GPU-therm`, `x86_pkg_temp`, …).
    pub zone: String,
    pub celsius: f32,
}

/// Every `/sys/class/thermal/thermal_zone*/temp` (millidegrees), by zone
/// number; zones without a readable number are left out.
pub fn temperatures(root: &Path) -> Vec<Temperature> {
    let dir = root.join("sys/class/thermal");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut zones: Vec<(u32, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix("thermal_zone")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    zones.sort();
    zones
        .into_iter()
        .filter_map(|(n, path)| {
            let milli: i64 = read_trimmed(&path.join("temp"))?.parse().ok()?;
            #[allow(clippy::cast_precision_loss)]
            let celsius = milli as f32 / 1000.0;
            let zone = read_trimmed(&path.join("type")).unwrap_or_else(|| format!("zone{n}"));
            Some(Temperature { zone, celsius })
        })
        .collect()
}

/// The hottest zone, for the heartbeat.
pub fn max_temperature(root: &Path) -> Option<f32> {
    temperatures(root)
        .into_iter()
        .map(|t| t.celsius)
        .reduce(f32::max)
}

/// The Raspberry Pi firmware's `get_throttled` bits, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Throttled {
    pub raw: u32,
    pub under_voltage_now: bool,
    pub freq_capped_now: bool,
    pub throttled_now: bool,
    pub soft_temp_limit_now: bool,
    pub under_voltage_since_boot: bool,
    pub freq_capped_since_boot: bool,
    pub throttled_since_boot: bool,
    pub soft_temp_limit_since_boot: bool,
}

impl Throttled {
    pub fn decode(raw: u32) -> Throttled {
        let bit = |n: u32| raw & (1 << n) != 0;
        Throttled {
            raw,
            under_voltage_now: bit(0),
            freq_capped_now: bit(1),
            throttled_now: bit(2),
            soft_temp_limit_now: bit(3),
            under_voltage_since_boot: bit(16),
            freq_capped_since_boot: bit(17),
            throttled_since_boot: bit(18),
            soft_temp_limit_since_boot: bit(19),
        }
    }

    /// Anything limiting the device right now.
    pub fn any_now(&self) -> bool {
        self.raw & 0xF != 0
    }
}

/// Looks for a file called `name` below `dir`, at most `depth` levels down
/// (sysfs paths differ between board generations).
fn find(dir: &Path, name: &str, depth: u32) -> Option<PathBuf> {
    let direct = dir.join(name);
    if direct.is_file() {
        return Some(direct);
    }
    if depth == 0 {
        return None;
    }
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    subdirs.into_iter().find_map(|d| find(&d, name, depth - 1))
}

/// `get_throttled` from the firmware driver's sysfs file (hex, as
/// `vcgencmd get_throttled` prints without its `0x`), wherever under
/// `/sys/devices/platform` this board generation puts it.
pub fn throttled(root: &Path) -> Option<Throttled> {
    let path = find(&root.join("sys/devices/platform"), "get_throttled", 3)?;
    let text = read_trimmed(&path)?;
    let hex = text
        .trim_start_matches("throttled=")
        .trim_start_matches("0x");
    u32::from_str_radix(hex, 16).ok().map(Throttled::decode)
}

/// The Jetson GPU's load in percent: its devfreq `load` file counts per
/// mille (`/sys/devices/gpu.0/load` on older boards, the GPU's platform
/// device on Orin).
pub fn gpu_load_pct(root: &Path) -> Option<f32> {
    let mut candidates = vec![
        root.join("sys/devices/gpu.0/load"),
        root.join("sys/devices/platform/gpu.0/load"),
    ];
    if let Ok(entries) = std::fs::read_dir(root.join("sys/devices/platform")) {
        let mut gpus: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| {
                let n = e.file_name().to_string_lossy().to_ascii_lowercase();
                // Tegra GPU names: ga10b (Orin), gv11b (Xavier), gp10b (TX2)
                ["ga10b", "gv11b", "gp10b", "gpu"]
                    .iter()
                    .any(|g| n.contains(g))
            })
            .map(|e| e.path().join("load"))
            .collect();
        gpus.sort();
        candidates.extend(gpus);
    }
    candidates.into_iter().find_map(|p| {
        let per_mille: f32 = read_trimmed(&p)?.parse().ok()?;
        Some(per_mille / 10.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/devices")
            .join(name)
    }

    #[test]
    fn raspberry_pi_4() {
        let root = fixture("pi4");
        let model = model(&root);
        assert_eq!(model.as_deref(), Some("Raspberry Pi 4 Model B Rev 1.5"));
        assert_eq!(class_hint(model.as_deref()), "CLASS_E_LOCAL");
        assert_eq!(
            temperatures(&root),
            vec![Temperature {
                zone: "cpu-thermal".into(),
                celsius: 61.835
            }]
        );
        // 0x50005: under-voltage and throttled now, both also since boot
        let t = throttled(&root).unwrap();
        assert_eq!(t.raw, 0x50005);
        assert!(t.under_voltage_now && t.throttled_now && !t.freq_capped_now);
        assert!(t.under_voltage_since_boot && t.throttled_since_boot);
        assert!(!t.soft_temp_limit_since_boot);
        assert!(t.any_now());
        assert_eq!(gpu_load_pct(&root), None);
    }

    #[test]
    fn raspberry_pi_5() {
        let root = fixture("pi5");
        let model = model(&root);
        assert_eq!(model.as_deref(), Some("Raspberry Pi 5 Model B Rev 1.0"));
        assert_eq!(class_hint(model.as_deref()), "CLASS_E_LOCAL");
        assert_eq!(max_temperature(&root), Some(54.2));
        // a different platform path; only "occurred since boot" bits set
        let t = throttled(&root).unwrap();
        assert_eq!(t.raw, 0x80000);
        assert!(!t.any_now());
        assert!(t.soft_temp_limit_since_boot);
    }

    #[test]
    fn jetson_orin() {
        let root = fixture("orin");
        let model = model(&root);
        assert_eq!(
            model.as_deref(),
            Some("NVIDIA Jetson AGX Orin Developer Kit")
        );
        assert_eq!(class_hint(model.as_deref()), "CLASS_D_GPU");
        let zones: Vec<String> = temperatures(&root).into_iter().map(|t| t.zone).collect();
        assert_eq!(zones, ["CPU-therm", "GPU-therm", "SOC0-therm"]);
        assert_eq!(max_temperature(&root), Some(48.5));
        assert_eq!(gpu_load_pct(&root), Some(37.2));
        assert_eq!(throttled(&root), None);
    }

    #[test]
    fn a_plain_x86_box_has_none_of_it() {
        let root = fixture("x86");
        assert_eq!(model(&root), None);
        assert_eq!(class_hint(None), "CLASS_C_PERSISTENT");
        assert_eq!(max_temperature(&root), Some(38.0));
        assert_eq!(throttled(&root), None);
        assert_eq!(gpu_load_pct(&root), None);
        // and a root with nothing at all
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(model(empty.path()), None);
        assert!(temperatures(empty.path()).is_empty());
        assert_eq!(throttled(empty.path()), None);
        assert_eq!(gpu_load_pct(empty.path()), None);
    }

    #[test]
    fn garbage_files_read_as_absent() {
        let root = tempfile::tempdir().unwrap();
        let zone = root.path().join("sys/class/thermal/thermal_zone0");
        std::fs::create_dir_all(&zone).unwrap();
        std::fs::write(zone.join("temp"), "hot\n").unwrap();
        let fw = root.path().join("sys/devices/platform/soc/soc:firmware");
        std::fs::create_dir_all(&fw).unwrap();
        std::fs::write(fw.join("get_throttled"), "zzz").unwrap();
        assert!(temperatures(root.path()).is_empty());
        assert_eq!(throttled(root.path()), None);
    }
}
