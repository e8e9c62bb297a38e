//! Reading a PKCS#10 certificate signing request (signature checked: the requester
//! holds the key) and issuing a client certificate for it with the cluster CA.
//!
//! The issued certificate is built from what was checked, never copied from the
//! request: the subject's CN and O, the usages the caller allows, our validity. This
//! module must not decide whether a request deserves a certificate (that is the
//! approver's and the signer controller's job in `certificates`).

use rcgen::{CertificateSigningRequestParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose};

use super::{Error, Pki, Result, ca_params, subject_params};

/// A parsed, signature-checked request.
#[derive(Debug)]
pub struct ParsedCsr {
    pub common_name: String,
    /// Every O of the subject, in order.
    pub organizations: Vec<String>,
    /// Whether the request asks for subject alternative names (DNS, IP, e-mail, URI).
    pub has_sans: bool,
    params: CertificateSigningRequestParams,
}

#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("the request is not PEM-encoded PKCS#10 (CERTIFICATE REQUEST)")]
    NotPem,
    #[error("the request cannot be parsed or its signature does not verify: {0}")]
    Invalid(#[from] rcgen::Error),
    #[error("the request's subject is not readable")]
    Subject,
}

/// Parses and verifies a PEM `CERTIFICATE REQUEST`.
pub fn parse_csr(pem: &[u8]) -> Result<ParsedCsr, CsrError> {
    let text = std::str::from_utf8(pem).map_err(|_| CsrError::NotPem)?;
    if !text.contains("-----BEGIN CERTIFICATE REQUEST-----") {
        return Err(CsrError::NotPem);
    }
    // rcgen checks the signature; its DistinguishedName keeps one value per type, so
    // the full subject (several O) is read with x509-parser.
    let params = CertificateSigningRequestParams::from_pem(text)?;
    let der = rustls::pki_types::pem::PemObject::from_pem_slice(pem)
        .map(|d: rustls::pki_types::CertificateSigningRequestDer<'_>| d.as_ref().to_vec())
        .map_err(|_| CsrError::NotPem)?;
    let (_, req) = <x509_parser::certification_request::X509CertificationRequest as x509_parser::prelude::FromDer<
        '_,
        x509_parser::error::X509Error,
    >>::from_der(&der)
    .map_err(|_| CsrError::Subject)?;
    let subject = &req.certification_request_info.subject;
    let text_of = |a: &x509_parser::x509::AttributeTypeAndValue<'_>| a.as_str().map(String::from);
    let common_name =
        subject.iter_common_name().next().map(text_of).transpose().map_err(|_| CsrError::Subject)?.unwrap_or_default();
    let organizations =
        subject.iter_organization().map(text_of).collect::<Result<Vec<_>, _>>().map_err(|_| CsrError::Subject)?;
    let has_sans = !params.params.subject_alt_names.is_empty();
    Ok(ParsedCsr { common_name, organizations, has_sans, params })
}

/// A PEM PKCS#10 request for `CN=cn, O=orgs…` signed with `key` (for clients and tests
/// of the signer).
pub fn request_pem(cn: &str, orgs: &[&str], key: &KeyPair) -> Result<String> {
    Ok(subject_params(cn, orgs).serialize_request(key)?.pem()?)
}

/// What a client certificate may be used for, from the CSR's `spec.usages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientUsages {
    pub key_encipherment: bool,
}

impl Pki {
    /// Issues a client-auth certificate for `csr` with the cluster CA, valid for
    /// `lifetime_s` seconds (from a minute ago, for clocks a little apart). Returns PEM.
    pub fn sign_client_csr(&self, csr: &ParsedCsr, usages: ClientUsages, lifetime_s: i64) -> Result<String> {
        let issuer = Issuer::new(ca_params(), KeyPair::from_pem(&self.ca_key_pem)?);
        // rcgen keeps one value per attribute type: the first O (for a kubelet the one
        // and only `system:nodes`; the approver refuses kubelet requests with more).
        let first_o: Vec<&str> = csr.organizations.first().map(String::as_str).into_iter().collect();
        let mut p = subject_params(&csr.common_name, &first_o);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if usages.key_encipherment {
            p.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        let now = time_now();
        p.not_before = now - time::Duration::minutes(1);
        p.not_after = now + time::Duration::seconds(lifetime_s);
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&uuid::Uuid::new_v4().into_bytes()));
        let cert = p.signed_by(&csr.params.public_key, &issuer).map_err(Error::Generate)?;
        Ok(cert.pem())
    }
}

fn time_now() -> time::OffsetDateTime {
    let secs = jiff::Timestamp::now().as_second();
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    fn request(cn: &str, orgs: &[&str]) -> (String, KeyPair) {
        let key = KeyPair::generate().unwrap();
        (request_pem(cn, orgs, &key).unwrap(), key)
    }

    #[test]
    fn csr_is_parsed_and_signed_with_the_subject_checked() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::ensure(dir.path(), &[]).unwrap();
        let (pem, _key) = request("system:node:n1", &["system:nodes"]);
        let csr = parse_csr(pem.as_bytes()).unwrap();
        assert_eq!(csr.common_name, "system:node:n1");
        assert_eq!(csr.organizations, ["system:nodes"]);
        assert!(!csr.has_sans);
        let cert = pki.sign_client_csr(&csr, ClientUsages { key_encipherment: false }, 3600).unwrap();
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let subject = super::super::x509::subject(&der).unwrap();
        assert_eq!(subject.common_name.as_deref(), Some("system:node:n1"));
        assert_eq!(subject.organizations, ["system:nodes"]);
        let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
        let life = x.validity().not_after.timestamp() - x.validity().not_before.timestamp();
        assert_eq!(life, 3600 + 60);

        assert!(matches!(parse_csr(b"junk"), Err(CsrError::NotPem)));
        // A request whose signature does not match its content is refused.
        let (pem, _) = request("system:node:n2", &["system:nodes"]);
        let mut der =
            rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).unwrap().as_ref().to_vec();
        let n = der.len();
        der[n - 5] ^= 0xff;
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &der);
        let tampered = format!("-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n");
        assert!(parse_csr(tampered.as_bytes()).is_err());
    }
}
