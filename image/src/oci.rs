//! OCI image archives for the node's own container images, which no registry
//! serves: one uncompressed layer holding the given files, the image config,
//! its manifest and an index naming the image, in the layout `ctr images
//! import` reads. Reproducible: fixed owners and times, sorted entries.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{ImageError, io, run};

/// A container image of a few files.
pub struct OciImage<'a> {
    /// Its full name, as pods and containerd's config refer to it.
    pub name: &'a str,
    /// (file on this machine, absolute path in the image, mode)
    pub files: &'a [(PathBuf, &'a str, u32)],
    pub entrypoint: &'a [&'a str],
}

impl OciImage<'_> {
    /// Writes the archive to `out`.
    pub fn write(&self, out: &Path) -> Result<(), ImageError> {
        let work = out.with_extension("oci");
        let _ = std::fs::remove_dir_all(&work);
        let (root, layout) = (work.join("root"), work.join("layout"));
        let blobs = layout.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
        for (from, to, mode) in self.files {
            let to = root.join(to.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().expect("a file in a directory")).map_err(io(&to))?;
            crate::copy(from, &to)?;
            std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(*mode)).map_err(io(&to))?;
        }
        let layer = work.join("layer.tar");
        tar(&root, &layer)?;
        let (layer_digest, layer_size) = add_blob(&blobs, &std::fs::read(&layer).map_err(io(&layer))?)?;
        let entrypoint: Vec<String> = self.entrypoint.iter().map(|a| format!("{a:?}")).collect();
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","config":{{"Entrypoint":[{}],"WorkingDir":"/"}},"rootfs":{{"type":"layers","diff_ids":["{layer_digest}"]}}}}"#,
            entrypoint.join(",")
        );
        let (config_digest, config_size) = add_blob(&blobs, config.as_bytes())?;
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{config_size}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{layer_size}}}]}}"#
        );
        let (manifest_digest, manifest_size) = add_blob(&blobs, manifest.as_bytes())?;
        let tag = self.name.rsplit_once(':').map_or("latest", |(_, tag)| tag);
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{manifest_digest}","size":{manifest_size},"platform":{{"architecture":"amd64","os":"linux"}},"annotations":{{"io.containerd.image.name":"{}","org.opencontainers.image.ref.name":"{tag}"}}}}]}}"#,
            self.name
        );
        let write = |name: &str, text: &str| std::fs::write(layout.join(name), text).map_err(io(&layout.join(name)));
        write("index.json", &index)?;
        write("oci-layout", r#"{"imageLayoutVersion":"1.0.0"}"#)?;
        tar(&layout, out)?;
        std::fs::remove_dir_all(&work).map_err(io(&work))
    }
}

/// `dir`'s contents as a reproducible tar at `out`.
fn tar(dir: &Path, out: &Path) -> Result<(), ImageError> {
    run(
        &format!("tar {}", out.display()),
        Command::new("tar")
            .args(["--create", "--sort=name", "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0", "--file"])
            .arg(out)
            .arg("-C")
            .arg(dir)
            .arg("."),
    )
}

/// Stores `data` as a blob; its digest (`sha256:…`) and size.
fn add_blob(blobs: &Path, data: &[u8]) -> Result<(String, usize), ImageError> {
    let scratch = blobs.join("incoming");
    std::fs::write(&scratch, data).map_err(io(&scratch))?;
    let hex = crate::sha256(&scratch)?;
    let blob = blobs.join(&hex);
    std::fs::rename(&scratch, &blob).map_err(io(&blob))?;
    Ok((format!("sha256:{hex}"), data.len()))
}
