//! Board models and architectures: what a node can run follows from them.

use serde::Serialize;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Arm64,
    Armhf,
}

impl Arch {
    pub fn parse(s: &str) -> Option<Arch> {
        match s {
            "arm64" | "aarch64" => Some(Arch::Arm64),
            "armhf" => Some(Arch::Armhf),
            _ => None,
        }
    }

    /// Debian's name of the architecture.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::Arm64 => "arm64",
            Arch::Armhf => "armhf",
        }
    }

    /// The name binfmt_misc/qemu-user-static use for this architecture.
    pub fn qemu(self) -> &'static str {
        match self {
            Arch::Arm64 => "aarch64",
            Arch::Armhf => "arm",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.debian())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Model {
    Zero,
    Zero2,
    Pi3,
    Pi4,
    Pi5,
}

pub const MODEL_NAMES: &str = "zero, zero2, pi3, pi4, pi5";

impl Model {
    pub fn parse(s: &str) -> Option<Model> {
        match s {
            "zero" => Some(Model::Zero),
            "zero2" => Some(Model::Zero2),
            "pi3" => Some(Model::Pi3),
            "pi4" => Some(Model::Pi4),
            "pi5" => Some(Model::Pi5),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Model::Zero => "zero",
            Model::Zero2 => "zero2",
            Model::Pi3 => "pi3",
            Model::Pi4 => "pi4",
            Model::Pi5 => "pi5",
        }
    }

    pub fn cpus(self) -> u32 {
        match self {
            Model::Zero => 1,
            _ => 4,
        }
    }

    /// Memory Slurm may count on, in MiB: the board's RAM minus what the
    /// firmware and kernel keep, so slurmd never finds less than declared.
    pub fn memory_mb(self) -> u32 {
        match self {
            Model::Zero | Model::Zero2 => 400,
            Model::Pi3 => 850,
            Model::Pi4 => 3700,
            Model::Pi5 => 7800,
        }
    }

    /// ARM architecture version of the CPU: the first Pi Zero is ARMv6.
    pub fn arm_version(self) -> u32 {
        match self {
            Model::Zero => 6,
            _ => 8,
        }
    }

    pub fn can_run(self, arch: Arch) -> bool {
        !(self == Model::Zero && arch == Arch::Arm64)
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
