//! The binary ORCA load report: the `xds.data.orca.v3.OrcaLoadReport` protobuf, decoded by
//! hand (its nine fields do not warrant a protobuf library).
//!
//! ```text
//! message OrcaLoadReport {
//!   double cpu_utilization = 1;  double mem_utilization = 2;  uint64 rps = 3 [deprecated];
//!   map<string, double> request_cost = 4;  map<string, double> utilization = 5;
//!   double rps_fractional = 6;  double eps = 7;  map<string, double> named_metrics = 8;
//!   double application_utilization = 9;
//! }
//! ```
//!
//! Unknown fields are skipped, as protobuf requires; a truncated or malformed message is
//! refused.

use super::orca_report::{OrcaError, OrcaReport};

const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;
const FIXED32: u64 = 5;

struct Reader<'a> {
    s: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, OrcaError> {
        let mut value = 0u64;
        for i in 0..10 {
            let (&b, rest) = self
                .s
                .split_first()
                .ok_or(OrcaError::new("a truncated varint"))?;
            self.s = rest;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(OrcaError::new("a varint longer than 10 bytes"))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], OrcaError> {
        let n = usize::try_from(n).map_err(|_| OrcaError::new("a truncated field"))?;
        if n > self.s.len() {
            return Err(OrcaError::new("a truncated field"));
        }
        let (taken, rest) = self.s.split_at(n);
        self.s = rest;
        Ok(taken)
    }

    fn double(&mut self) -> Result<f64, OrcaError> {
        let bytes = self.take(8)?;
        let mut array = [0; 8];
        array.copy_from_slice(bytes);
        Ok(f64::from_le_bytes(array))
    }

    /// Reads a field's key: its number and wire type.
    fn key(&mut self) -> Result<(u64, u64), OrcaError> {
        let key = self.varint()?;
        Ok((key >> 3, key & 7))
    }

    fn skip(&mut self, wire: u64) -> Result<(), OrcaError> {
        match wire {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            LEN => {
                let n = self.varint()?;
                self.take(n).map(drop)
            }
            FIXED32 => self.take(4).map(drop),
            _ => Err(OrcaError::new("an unsupported wire type")),
        }
    }
}

/// A map entry: `string key = 1; double value = 2;`.
fn entry(bytes: &[u8]) -> Result<(String, f64), OrcaError> {
    let mut r = Reader { s: bytes };
    let (mut key, mut value) = (String::new(), 0.0);
    while !r.s.is_empty() {
        match r.key()? {
            (1, LEN) => {
                let n = r.varint()?;
                key = String::from_utf8(r.take(n)?.to_vec())
                    .map_err(|_| OrcaError::new("a key that is not UTF-8"))?;
            }
            (2, FIXED64) => value = r.double()?,
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok((key, value))
}

/// Decodes a serialized `OrcaLoadReport`.
pub(super) fn decode(bytes: &[u8]) -> Result<OrcaReport, OrcaError> {
    let mut r = Reader { s: bytes };
    let mut report = OrcaReport::default();
    while !r.s.is_empty() {
        let (field, wire) = r.key()?;
        let value = match (field, wire) {
            (1 | 2 | 6 | 7 | 9, FIXED64) => r.double()?,
            (4 | 5 | 8, LEN) => {
                let n = r.varint()?;
                let (key, value) = entry(r.take(n)?)?;
                if !value.is_finite() {
                    return Err(OrcaError::new("a value is NaN or infinite"));
                }
                let map = match field {
                    4 => &mut report.request_cost,
                    5 => &mut report.utilization,
                    _ => &mut report.named_metrics,
                };
                map.push((key, value));
                continue;
            }
            (_, wire) => {
                r.skip(wire)?;
                continue;
            }
        };
        if !value.is_finite() {
            return Err(OrcaError::new("a value is NaN or infinite"));
        }
        let slot = match field {
            1 => &mut report.cpu_utilization,
            2 => &mut report.mem_utilization,
            6 => &mut report.rps_fractional,
            7 => &mut report.eps,
            _ => &mut report.application_utilization,
        };
        *slot = Some(value);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn double(field: u8, v: f64) -> Vec<u8> {
        let mut out = vec![field << 3 | 1];
        out.extend_from_slice(&v.to_le_bytes());
        out
    }

    fn map_entry(field: u8, key: &str, v: f64) -> Vec<u8> {
        let mut entry = vec![0x0a, key.len() as u8];
        entry.extend_from_slice(key.as_bytes());
        entry.extend(double(2, v));
        let mut out = vec![field << 3 | 2, entry.len() as u8];
        out.extend(entry);
        out
    }

    #[test]
    fn decodes_fields_maps_and_skips_the_unknown() {
        let mut msg = double(1, 0.5);
        msg.extend([3 << 3, 0x96, 0x01]); // rps = 150, a varint (deprecated, skipped)
        msg.extend(map_entry(8, "kv_cache_usage_perc", 0.75));
        msg.extend(map_entry(5, "gpu", 0.2));
        msg.extend(double(9, 0.1));
        msg.extend([15 << 3 | 5, 1, 2, 3, 4]); // an unknown fixed32 field
        let r = decode(&msg).unwrap();
        assert_eq!(r.cpu_utilization, Some(0.5));
        assert_eq!(r.application_utilization, Some(0.1));
        assert_eq!(r.named_metrics, [("kv_cache_usage_perc".to_owned(), 0.75)]);
        assert_eq!(r.utilization, [("gpu".to_owned(), 0.2)]);
    }

    #[test]
    fn a_map_key_given_twice_takes_its_last_value() {
        // Protobuf: "if there are duplicate map keys, the last key seen is used".
        let mut msg = map_entry(8, "num_requests_waiting", 1.0);
        msg.extend(map_entry(8, "kv_cache_usage_perc", 0.5));
        msg.extend(map_entry(8, "num_requests_waiting", 9.0));
        let r = decode(&msg).unwrap();
        let l = r.load_report(tokio::time::Instant::now());
        assert_eq!((l.waiting, l.kv_usage), (Some(9), Some(0.5)));
    }

    #[test]
    fn refuses_truncated_and_nonsense() {
        let msg = double(1, 0.5);
        assert!(decode(&msg[..5]).is_err());
        assert!(decode(&double(7, f64::NAN)).is_err());
        assert!(decode(&[0x0b]).is_err()); // wire type 3 (groups) is not supported
        assert!(decode(&[0x80; 11]).is_err());
        assert!(decode(&[8 << 3 | 2, 200]).is_err());
        assert!(decode(&[]).is_ok());
    }
}
