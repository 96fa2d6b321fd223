//! Interfaces of the current network namespace (via netlink-backed
//! `if_nameindex`, so it is right even when /sys belongs to another
//! namespace), filtered by the operator's glob patterns.
use anyhow::{Context, Result};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Interface {
    pub name: String,
    pub index: u32,
}

pub fn list() -> Vec<Interface> {
    let mut out = Vec::new();
    // SAFETY: if_nameindex returns an array terminated by a zero entry,
    // freed below with if_freenameindex.
    unsafe {
        let head = libc::if_nameindex();
        if head.is_null() {
            return out;
        }
        let mut cur = head;
        while (*cur).if_index != 0 && !(*cur).if_name.is_null() {
            let name = std::ffi::CStr::from_ptr((*cur).if_name)
                .to_string_lossy()
                .into_owned();
            out.push(Interface {
                name,
                index: (*cur).if_index,
            });
            cur = cur.add(1);
        }
        libc::if_freenameindex(head);
    }
    out.sort();
    out
}

/// Which interfaces get a group of programs.
#[derive(Clone, Debug)]
pub struct Selector {
    include: Vec<glob::Pattern>,
    exclude: Vec<glob::Pattern>,
}

fn patterns(flag: &str, list: &[String]) -> Result<Vec<glob::Pattern>> {
    list.iter()
        .map(|p| glob::Pattern::new(p).with_context(|| format!("{flag}: bad pattern {p:?}")))
        .collect()
}

impl Selector {
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self> {
        Ok(Self {
            include: patterns("--interfaces", include)?,
            exclude: patterns("--exclude-interfaces", exclude)?,
        })
    }

    /// The wire-facing interfaces that get XDP (none unless named).
    pub fn xdp(include: &[String]) -> Result<Self> {
        Ok(Self {
            include: patterns("--xdp-interfaces", include)?,
            exclude: Vec::new(),
        })
    }

    pub fn matches(&self, name: &str) -> bool {
        self.include.iter().any(|p| p.matches(name))
            && !self.exclude.iter().any(|p| p.matches(name))
    }
}
