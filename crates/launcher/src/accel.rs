//! Choosing the accelerator: KVM when it can really run a guest, else TCG.
//!
//! `/dev/kvm` opening is not enough. Paravirtual hosts (the `kvm_pvm` module, Pagetable-based
//! Virtual Machine) accept `-enable-kvm` yet only run kernels built as PVM guests; a stock
//! kernel crawls and then hangs, while QMP `query-kvm` still says enabled. So KVM is chosen
//! only when `/dev/kvm` opens read-write, a hardware module (`kvm_intel`, `kvm_amd`) is
//! loaded or the CPU advertises vmx/svm, and `kvm_pvm` is absent. Otherwise TCG, with the
//! reason, which the VMI reports as upstream's `SoftwareEmulation` condition.

use std::path::Path;

/// The accelerator QEMU will use, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg { reason: String },
}

impl Accel {
    pub fn is_emulated(&self) -> bool {
        matches!(self, Self::Tcg { .. })
    }
}

/// What the host says about virtualization, gathered by [`HostFacts::probe`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    pub dev_kvm_usable: bool,
    pub hardware_module: bool,
    pub cpu_flags_vmx_svm: bool,
    pub pvm_module: bool,
}

impl HostFacts {
    /// Reads the facts from `/dev`, `/sys/module` and `/proc/cpuinfo` under `root`.
    pub fn probe(root: &Path) -> Self {
        let dev_kvm_usable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(root.join("dev/kvm"))
            .is_ok();
        let module = |m: &str| root.join("sys/module").join(m).exists();
        let cpuinfo = std::fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
        let cpu_flags_vmx_svm = cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
        Self {
            dev_kvm_usable,
            hardware_module: module("kvm_intel") || module("kvm_amd"),
            cpu_flags_vmx_svm,
            pvm_module: module("kvm_pvm"),
        }
    }
}

/// Decides the accelerator from the host's facts.
pub fn decide(facts: &HostFacts) -> Accel {
    let tcg = |reason: &str| Accel::Tcg {
        reason: reason.to_owned(),
    };
    if !facts.dev_kvm_usable {
        return tcg("/dev/kvm is missing or cannot be opened read-write");
    }
    if facts.pvm_module {
        return tcg("the host's KVM is kvm_pvm, which runs only PVM-built guest kernels");
    }
    if !facts.hardware_module && !facts.cpu_flags_vmx_svm {
        return tcg("no hardware virtualization: neither kvm_intel/kvm_amd nor vmx/svm");
    }
    Accel::Kvm
}

/// The accelerator for this host, honouring `KUBEVIRT_RS_ACCEL=tcg` to force emulation.
pub fn detect() -> Accel {
    if std::env::var("KUBEVIRT_RS_ACCEL").is_ok_and(|v| v == "tcg") {
        return Accel::Tcg {
            reason: "forced by KUBEVIRT_RS_ACCEL=tcg".into(),
        };
    }
    decide(&HostFacts::probe(Path::new("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_only_with_real_hardware_support() {
        let hw = HostFacts {
            dev_kvm_usable: true,
            hardware_module: true,
            cpu_flags_vmx_svm: true,
            pvm_module: false,
        };
        assert_eq!(decide(&hw), Accel::Kvm);
        let pvm = HostFacts {
            dev_kvm_usable: true,
            hardware_module: false,
            cpu_flags_vmx_svm: false,
            pvm_module: true,
        };
        assert!(matches!(decide(&pvm), Accel::Tcg { reason } if reason.contains("kvm_pvm")));
        let none = HostFacts::default();
        assert!(decide(&none).is_emulated());
        let no_hw = HostFacts {
            dev_kvm_usable: true,
            ..Default::default()
        };
        assert!(decide(&no_hw).is_emulated());
    }

    #[test]
    fn probe_reads_a_fake_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("sys/module/kvm_pvm")).unwrap();
        std::fs::create_dir_all(root.path().join("proc")).unwrap();
        std::fs::write(
            root.path().join("proc/cpuinfo"),
            "flags\t\t: fpu hypervisor\n",
        )
        .unwrap();
        let facts = HostFacts::probe(root.path());
        assert_eq!(
            facts,
            HostFacts {
                dev_kvm_usable: false,
                hardware_module: false,
                cpu_flags_vmx_svm: false,
                pvm_module: true
            }
        );
    }
}
