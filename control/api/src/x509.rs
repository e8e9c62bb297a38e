//! Reads the subject (CN and O) out of a DER certificate that rustls has already
//! verified, so authentication can map it to a user and groups.
//!
//! A deliberately minimal DER walk instead of a full X.509 parser dependency: it must
//! not be used to verify anything, only to read names from trusted bytes.

/// The parts of a certificate subject that authentication uses.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Subject {
    pub common_name: Option<String>,
    pub organizations: Vec<String>,
}

const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_O: &[u8] = &[0x55, 0x04, 0x0a];

/// One TLV: (tag, contents, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// Parses the subject of a DER-encoded X.509 certificate.
pub fn subject(der: &[u8]) -> Option<Subject> {
    let (_, cert, _) = tlv(der)?; // Certificate SEQUENCE
    let (_, tbs, _) = tlv(cert)?; // TBSCertificate SEQUENCE
    let mut rest = tbs;
    let (tag, _, r) = tlv(rest)?;
    if tag == 0xa0 {
        rest = r; // explicit [0] version
    }
    // serialNumber, signature, issuer, validity, then subject.
    for _ in 0..4 {
        rest = tlv(rest)?.2;
    }
    let (_, mut name, _) = tlv(rest)?;
    let mut out = Subject::default();
    while !name.is_empty() {
        let (_, set, r) = tlv(name)?;
        name = r;
        let mut set = set;
        while !set.is_empty() {
            let (_, atv, r) = tlv(set)?;
            set = r;
            let (_, oid, r) = tlv(atv)?;
            let (_, value, _) = tlv(r)?;
            let value = String::from_utf8_lossy(value).into_owned();
            if oid == OID_CN {
                out.common_name = Some(value);
            } else if oid == OID_O {
                out.organizations.push(value);
            }
        }
    }
    Some(out)
}
