//! Certificates generated at test time (rcgen, ECDSA P-256): a CA, a server certificate for
//! 127.0.0.1 / localhost signed by it, a client certificate signed by it, and an unrelated
//! second CA with its own client certificate. Written as PEM files into a temp dir.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

/// One test PKI. The files live as long as this value.
pub struct Pki {
    dir: TempDir,
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// Server certificate (SANs: IP 127.0.0.1, DNS localhost) and key.
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// Client certificate (CN `electd`) signed by [`Pki::ca`], and its key.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed nothing etcd knows.
    pub other_ca: PathBuf,
    /// A client certificate signed by [`Pki::other_ca`], and its key.
    pub other_client_cert: PathBuf,
    pub other_client_key: PathBuf,
}

fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::new()).expect("no SANs");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("generate CA key");
    let cert = params.self_signed(&key).expect("self-sign CA");
    (cert.pem(), Issuer::new(params, key))
}

fn new_leaf(
    issuer: &Issuer<'static, KeyPair>,
    cn: &str,
    sans: &[&str],
    usages: &[ExtendedKeyUsagePurpose],
) -> (String, String) {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).expect("valid SANs");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages.to_vec();
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().expect("generate leaf key");
    let cert = params.signed_by(&key, issuer).expect("sign leaf");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    pub fn generate() -> Pki {
        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let dir = tempfile::Builder::new()
            .prefix("electd-pki-")
            .tempdir()
            .expect("temp dir for certificates");
        let write = |name: &str, text: &str| -> PathBuf {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write PEM file");
            path
        };
        let (ca_pem, ca) = new_ca("electd test CA");
        let (server_pem, server_key_pem) = new_leaf(
            &ca,
            "etcd",
            &["127.0.0.1", "localhost"],
            &[ServerAuth, ClientAuth],
        );
        let (client_pem, client_key_pem) = new_leaf(&ca, "electd", &[], &[ClientAuth]);
        let (other_ca_pem, other_ca) = new_ca("unrelated CA");
        let (other_client_pem, other_client_key_pem) =
            new_leaf(&other_ca, "electd", &[], &[ClientAuth]);
        Pki {
            ca: write("ca.pem", &ca_pem),
            server_cert: write("server.pem", &server_pem),
            server_key: write("server-key.pem", &server_key_pem),
            client_cert: write("client.pem", &client_pem),
            client_key: write("client-key.pem", &client_key_pem),
            other_ca: write("other-ca.pem", &other_ca_pem),
            other_client_cert: write("other-client.pem", &other_client_pem),
            other_client_key: write("other-client-key.pem", &other_client_key_pem),
            dir,
        }
    }

    /// The directory holding the PEM files (for extra test files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// etcd flags for a TLS-only client port requiring a client certificate signed by
    /// [`Pki::ca`].
    pub fn etcd_args(&self) -> Vec<String> {
        vec![
            "--client-cert-auth".into(),
            format!("--trusted-ca-file={}", self.ca.display()),
            format!("--cert-file={}", self.server_cert.display()),
            format!("--key-file={}", self.server_key.display()),
        ]
    }

    /// etcdctl flags to talk to that etcd.
    pub fn etcdctl_args(&self) -> Vec<String> {
        vec![
            format!("--cacert={}", self.ca.display()),
            format!("--cert={}", self.client_cert.display()),
            format!("--key={}", self.client_key.display()),
        ]
    }

    /// electd flags for mutual TLS with the good CA and client certificate.
    pub fn electd_args(&self) -> Vec<String> {
        tls_args(&self.ca, &self.client_cert, &self.client_key)
    }
}

/// `--etcd-ca CA --etcd-cert CERT --etcd-key KEY`.
pub fn tls_args(ca: &Path, cert: &Path, key: &Path) -> Vec<String> {
    [
        ("--etcd-ca", ca),
        ("--etcd-cert", cert),
        ("--etcd-key", key),
    ]
    .into_iter()
    .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
    .collect()
}

/// `&[String]` as `Vec<&str>`, for the harness's `&[&str]` builders.
pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
