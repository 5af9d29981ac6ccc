//! Builds the BPF object with clang-19 and generates the C layout table the
//! layout test compares the Rust mirrors with.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const BPF_SOURCES: &[&str] = &["socket_lb", "nodeport"];

fn main() {
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let bpf_dir = manifest.join("src/bpf");
    println!(
        "cargo:rerun-if-changed={}",
        bpf_dir.join("switchyard.h").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        bpf_dir.join("layout.c").display()
    );
    println!("cargo:rerun-if-changed={}", bpf_dir.join("lb.h").display());
    println!("cargo:rerun-if-env-changed=SWITCHYARD_CLANG");

    let clang = env::var("SWITCHYARD_CLANG").unwrap_or_else(|_| "clang-19".to_owned());
    for name in BPF_SOURCES {
        let source = bpf_dir.join(format!("{name}.bpf.c"));
        println!("cargo:rerun-if-changed={}", source.display());
        compile_bpf(
            &clang,
            &bpf_dir,
            &source,
            &out.join(format!("{name}.bpf.o")),
        );
    }
    generate_layout(&bpf_dir, &out);
}

fn compile_bpf(clang: &str, include: &Path, source: &Path, object: &Path) {
    let mut command = Command::new(clang);
    command
        .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror"])
        .arg("-I/usr/include/x86_64-linux-gnu")
        .arg("-I")
        .arg(include)
        .arg("-c")
        .arg(source)
        .arg("-o")
        .arg(object);
    let output = match command.output() {
        Ok(output) => output,
        Err(error) => panic!(
            "\n\nswitchyard-ebpf: cannot run `{clang}` ({error}).\n\
             The BPF programs are C compiled with clang-19: run `cargo xtask test` (it installs \
             what is missing), or `apt-get install clang-19 llvm-19 libbpf-dev`.\n\
             (SWITCHYARD_CLANG names another clang.)\n\n"
        ),
    };
    assert!(
        output.status.success(),
        "\n\nswitchyard-ebpf: `{clang}` failed on {} ({}):\n{}{}\n\
             If a header such as bpf/bpf_helpers.h or asm/types.h is missing: \
             `apt-get install libbpf-dev` (or run `cargo xtask test`).\n\n",
        source.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

/// Compiles and runs `layout.c` on the host; its output is `layout.rs`.
fn generate_layout(include: &Path, out: &Path) {
    let exe = out.join("sy-layout");
    let host = env::var("HOST").expect("cargo sets HOST");
    let compiler = cc::Build::new()
        .target(&host)
        .host(&host)
        .cargo_metadata(false)
        .cargo_warnings(false)
        .get_compiler();
    let status = compiler
        .to_command()
        .arg("-I")
        .arg(include)
        .arg(include.join("layout.c"))
        .arg("-o")
        .arg(&exe)
        .status()
        .unwrap_or_else(|error| {
            panic!("switchyard-ebpf: cannot run the host C compiler for layout.c: {error}")
        });
    assert!(
        status.success(),
        "switchyard-ebpf: the host C compiler failed on layout.c ({status})"
    );
    let output = Command::new(&exe)
        .output()
        .unwrap_or_else(|error| panic!("switchyard-ebpf: cannot run {}: {error}", exe.display()));
    assert!(
        output.status.success(),
        "switchyard-ebpf: {} failed ({})",
        exe.display(),
        output.status
    );
    std::fs::write(out.join("layout.rs"), &output.stdout)
        .unwrap_or_else(|error| panic!("switchyard-ebpf: cannot write layout.rs: {error}"));
}
