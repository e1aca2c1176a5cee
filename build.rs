//! Compiles `proto/` with protox (pure Rust, no system `protoc`) and writes the descriptor
//! set that server reflection serves.
use prost::Message;
use std::{env, fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // `sqlx::migrate!` embeds migrations/; a new or changed file must rebuild.
    println!("cargo:rerun-if-changed=migrations");
    let fds = protox::compile(["toolgate/v1/toolgate.proto"], ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join("toolgate_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .codec_path("crate::proto::Codec")
        .compile_fds(fds)?;
    Ok(())
}
