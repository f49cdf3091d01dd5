//! The control plane's CA and certificates, made with the `openssl` command (a
//! test cluster needs nothing a library would add): ECDSA P-256 keys, a CA,
//! the API server's serving certificate, and client certificates whose
//! subject is the identity RBAC and the Node authorizer see.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::ClusterError;

/// A certificate and its key, as files.
#[derive(Clone, Debug)]
pub struct KeyPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl KeyPair {
    pub(crate) fn at(dir: &Path, name: &str) -> Self {
        KeyPair { cert: dir.join(format!("{name}.crt")), key: dir.join(format!("{name}.key")) }
    }

    fn exists(&self) -> bool {
        self.cert.is_file() && self.key.is_file()
    }
}

fn openssl(what: &str, args: &[&str], dir: &Path) -> Result<(), ClusterError> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|source| ClusterError::Spawn { program: "openssl".into(), source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ClusterError::Failed { what: what.into(), output: String::from_utf8_lossy(&out.stderr).into_owned() })
    }
}

/// The CA under `dir` (`ca.crt`, `ca.key`), made when missing.
pub fn ca(dir: &Path) -> Result<KeyPair, ClusterError> {
    let ca = KeyPair::at(dir, "ca");
    if ca.exists() {
        return Ok(ca);
    }
    std::fs::create_dir_all(dir).map_err(crate::io(dir))?;
    openssl(
        "making the CA",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "3650",
            "-subj",
            "/CN=nodeplane-test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        dir,
    )?;
    Ok(ca)
}

/// What a certificate is for.
pub enum Usage<'a> {
    /// A TLS server, with these subject alternative names (`DNS:…`, `IP:…`).
    Server(&'a [&'a str]),
    /// A client: its subject is the identity (`CN` the user, `O` the groups).
    Client,
}

/// The certificate `name` under `dir` with `subject` (`/O=…/CN=…`), signed by
/// the CA there; made when missing, and made again when it was made for
/// another subject or other names (its request is kept in `{name}.ext`).
pub fn issue(dir: &Path, name: &str, subject: &str, usage: Usage<'_>) -> Result<KeyPair, ClusterError> {
    let pair = KeyPair::at(dir, name);
    let extensions = match usage {
        Usage::Server(names) => format!(
            "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName={}\n",
            names.join(",")
        ),
        Usage::Client => "keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n".to_owned(),
    };
    // The subject too: a record names everything the certificate says.
    let record = format!("# subject {subject}\n{extensions}");
    let ext = format!("{name}.ext");
    if pair.exists() && std::fs::read_to_string(dir.join(&ext)).is_ok_and(|made| made == record) {
        return Ok(pair);
    }
    ca(dir)?;
    let csr = format!("{name}.csr");
    openssl(
        &format!("a key and request for {name}"),
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &csr,
            "-subj",
            subject,
        ],
        dir,
    )?;
    std::fs::write(dir.join(&ext), &record).map_err(crate::io(&dir.join(&ext)))?;
    openssl(
        &format!("signing {name}"),
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &format!("0x{:x}", serial()),
            "-days",
            "365",
            "-extfile",
            &ext,
            "-out",
            &format!("{name}.crt"),
        ],
        dir,
    )?;
    let _ = std::fs::remove_file(dir.join(csr));
    Ok(pair)
}

/// The service-account signing key (`sa.key`, `sa.pub`), made when missing.
pub fn service_account_key(dir: &Path) -> Result<(PathBuf, PathBuf), ClusterError> {
    let (key, public) = (dir.join("sa.key"), dir.join("sa.pub"));
    if !key.is_file() || !public.is_file() {
        std::fs::create_dir_all(dir).map_err(crate::io(dir))?;
        openssl(
            "the service-account key",
            &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "sa.key"],
            dir,
        )?;
        openssl("its public half", &["ec", "-in", "sa.key", "-pubout", "-out", "sa.pub"], dir)?;
    }
    Ok((key, public))
}

/// A serial number unlikely to repeat: the time in nanoseconds.
fn serial() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_in(cert: &Path) -> String {
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(cert)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A directory kept from before the names changed (as the API server's
    /// guest address did) gets a certificate with the new names.
    #[test]
    fn a_certificate_is_made_again_when_its_names_change() {
        let _alone = crate::tests::FORKS_AND_PORTS.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let first = issue(dir.path(), "server", "/CN=server", Usage::Server(&["IP:10.0.2.2"])).unwrap();
        assert!(names_in(&first.cert).contains("10.0.2.2"));
        let made = std::fs::read(&first.cert).unwrap();
        issue(dir.path(), "server", "/CN=server", Usage::Server(&["IP:10.0.2.2"])).unwrap();
        assert_eq!(std::fs::read(&first.cert).unwrap(), made, "the same names: kept");
        let second = issue(dir.path(), "server", "/CN=server", Usage::Server(&["IP:10.0.2.100"])).unwrap();
        assert!(names_in(&second.cert).contains("10.0.2.100"), "{}", names_in(&second.cert));
    }
}
