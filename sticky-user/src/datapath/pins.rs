//! Where an instance pins its maps and tc links, and what a previous daemon left there.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use aya::{
    maps::{Array, Map, MapData},
    programs::{TcAttachType, links::PinnedLink},
};
use sticky_common::maps::{self as names, Settings};

/// Where an instance pins its maps and tc links: `/sys/fs/bpf/sticky/<instance>/`.
#[derive(Clone, Debug)]
pub struct Pins {
    pub dir: PathBuf,
}

impl Pins {
    pub const ROOT: &str = "/sys/fs/bpf/sticky";

    pub fn for_instance(instance: &str) -> Self {
        Self {
            dir: Path::new(Self::ROOT).join(instance),
        }
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(name)
    }

    pub(super) fn link(&self, iface: &str, kind: TcAttachType) -> PathBuf {
        let dir = if kind == TcAttachType::Ingress {
            "ingress"
        } else {
            "egress"
        };
        self.dir.join("links").join(format!("{iface}-{dir}"))
    }

    /// The DSR XDP link on `iface`.
    pub(super) fn xdp_link(&self, iface: &str) -> PathBuf {
        self.dir.join("links").join(format!("{iface}-xdp"))
    }

    /// The DSR tc ingress link on `iface`: named apart from NAT's, so a daemon can tell which
    /// mode the pins were made in.
    pub(super) fn dsr_link(&self, iface: &str) -> PathBuf {
        self.dir.join("links").join(format!("{iface}-ingress-dsr"))
    }

    /// Whether a previous daemon left pinned state here.
    pub fn exist(&self) -> bool {
        self.map(names::SETTINGS).exists()
    }

    /// Creates the folders pins go in.
    pub(super) fn create(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(self.dir.join("maps"))
            .and_then(|()| std::fs::create_dir_all(self.dir.join("links")))
            .with_context(|| {
                format!(
                    "create pin folder {} (is bpffs mounted?)",
                    self.dir.display()
                )
            })
    }

    /// The settings a previous daemon pinned.
    pub(super) fn settings(&self) -> anyhow::Result<Settings> {
        let path = self.map(names::SETTINGS);
        let data =
            MapData::from_pin(&path).with_context(|| format!("open pinned {}", path.display()))?;
        let size = data
            .info()
            .with_context(|| format!("read {}", path.display()))?
            .value_size() as usize;
        if size != std::mem::size_of::<Settings>() {
            // Pinned by a sticky whose map layout differs: adopting would hand the programs
            // values they misread.
            let instance = self.dir.file_name().map_or_else(
                || self.dir.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            anyhow::bail!(
                "instance '{instance}' has pinned maps of another sticky version (settings of \
                 {size} bytes, this one {}): stop it with `sticky stop --instance {instance}` \
                 first (that ends its connections)",
                std::mem::size_of::<Settings>()
            );
        }
        let array: Array<MapData, Settings> = Array::try_from(Map::Array(data))?;
        Ok(array.get(&0, 0)?)
    }

    /// How many entries the pinned map `name` holds at most (what it was created with).
    pub(super) fn max_entries(&self, name: &str) -> anyhow::Result<u32> {
        let path = self.map(name);
        let data =
            MapData::from_pin(&path).with_context(|| format!("open pinned {}", path.display()))?;
        Ok(data
            .info()
            .with_context(|| format!("read {}", path.display()))?
            .max_entries())
    }

    /// Detaches every pinned link and removes every pin of the instance.
    pub fn remove(&self) -> anyhow::Result<()> {
        let links = self.dir.join("links");
        if let Ok(entries) = std::fs::read_dir(&links) {
            for entry in entries.flatten() {
                let path = entry.path();
                match PinnedLink::from_pin(&path) {
                    Ok(link) => drop(
                        link.unpin()
                            .with_context(|| format!("unpin {}", path.display()))?,
                    ),
                    Err(_) => std::fs::remove_file(&path)
                        .with_context(|| format!("remove {}", path.display()))?,
                }
            }
        }
        let maps = self.dir.join("maps");
        if let Ok(entries) = std::fs::read_dir(&maps) {
            for entry in entries.flatten() {
                std::fs::remove_file(entry.path())
                    .with_context(|| format!("remove {}", entry.path().display()))?;
            }
        }
        for dir in [links, maps, self.dir.clone()] {
            let _ = std::fs::remove_dir(dir);
        }
        Ok(())
    }
}
