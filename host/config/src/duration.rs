//! `google.protobuf.Duration` as Envoy reads it from YAML.
//!
//! Envoy turns YAML into JSON and hands it to protobuf's JSON parser in its legacy mode
//! (`JsonStringToMessage` always sets `allow_legacy_syntax`), which takes a duration in two forms:
//!
//! - the proto3 JSON string: an integer number of seconds, optionally negative, optionally
//!   followed by `.` and one to nine digits, then exactly one `s` (`"1s"`, `"0.25s"`, `"1.5s"`,
//!   `"-2s"`). No other unit (`"1000ms"`, `"1m"`), no exponent, sign `+`, spaces or empty parts
//!   (`".5s"`, `"1.s"`); at most 315,576,000,000 seconds either way;
//! - the message itself, `{seconds, nanos}`, each an integer or an integer in a string.
//!
//! A bare number is not a duration. Envoy then converts every duration it uses into
//! milliseconds and refuses a negative one ("Expected positive duration") and one over
//! 9,223,372,036 seconds, or with `nanos` outside 0..=999,999,999 ("Duration out-of-range"):
//! [`ProtoDuration::to_std`] applies those rules.

use std::time::Duration;

use thiserror::Error;

/// protobuf's range for a `google.protobuf.Duration`: about 10,000 years.
const MAX_PROTO_SECONDS: u64 = 315_576_000_000;
/// The longest duration Envoy converts to milliseconds: `i64::MAX` nanoseconds, in seconds.
const MAX_ENVOY_SECONDS: u64 = 9_223_372_036;
const MAX_NANOS: u32 = 999_999_999;

/// Why a value is not a duration Envoy accepts.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub(crate) enum DurationError {
    /// A string outside the proto3 JSON grammar.
    #[error("expected a duration such as \"0.25s\", found `{0}`")]
    Syntax(String),
    /// A YAML number.
    #[error("expected a duration such as \"5s\", found a bare number")]
    BareNumber,
    /// Neither a string nor a mapping.
    #[error("expected a duration such as \"0.25s\"")]
    NotADuration,
    /// Beyond protobuf's range.
    #[error("is beyond a google.protobuf.Duration's range (315576000000s)")]
    OutOfProtoRange,
    /// Negative: Envoy's "Expected positive duration".
    #[error("is a negative duration")]
    Negative,
    /// Over what Envoy converts to milliseconds.
    #[error("is longer than Envoy accepts (9223372036s, about 292 years)")]
    TooLong,
    /// `nanos` outside 0..=999,999,999 in the `{seconds, nanos}` form.
    #[error("`nanos` must be from 0 to 999999999")]
    NanosOutOfRange,
}

impl DurationError {
    /// What to write instead.
    pub(crate) fn hint(&self) -> Option<&'static str> {
        match self {
            Self::Syntax(_) | Self::NotADuration => Some(
                "write seconds with up to nine decimals and an `s` (\"1s\", \"0.25s\", \"1.5s\") or {seconds, nanos}; \
                 Envoy takes no other unit",
            ),
            Self::BareNumber => Some("write the unit: \"5s\""),
            Self::Negative => Some("Envoy refuses negative durations"),
            Self::OutOfProtoRange | Self::TooLong | Self::NanosOutOfRange => None,
        }
    }
}

/// A duration as protobuf holds it: seconds and nanoseconds, each carrying the sign.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProtoDuration {
    /// `seconds`.
    pub seconds: i64,
    /// `nanos`.
    pub nanos: i64,
}

impl ProtoDuration {
    /// Parses the proto3 JSON string form, exactly as protobuf's parser does.
    pub(crate) fn parse(text: &str) -> Result<Self, DurationError> {
        let syntax = || DurationError::Syntax(text.to_owned());
        // The seconds: the longest run of digits and `-`, which must be one integer.
        let int_end = text.find(|c: char| !(c.is_ascii_digit() || c == '-')).unwrap_or(text.len());
        let (int_part, rest) = text.split_at(int_end);
        let seconds: i64 = int_part.parse().map_err(|_| syntax())?;
        if seconds.unsigned_abs() > MAX_PROTO_SECONDS {
            return Err(DurationError::OutOfProtoRange);
        }
        let (fraction, rest) = match rest.strip_prefix('.') {
            Some(after) => {
                let digits = after.find(|c: char| !c.is_ascii_digit()).unwrap_or(after.len());
                if digits == 0 || digits > 9 {
                    return Err(syntax());
                }
                let value: i64 = after[..digits].parse().map_err(|_| syntax())?;
                let scale = 10_i64.pow(9 - u32::try_from(digits).map_err(|_| syntax())?);
                (value * scale, &after[digits..])
            }
            None => (0, rest),
        };
        if rest != "s" {
            return Err(syntax());
        }
        // `-0.5s` is zero seconds and minus half a second.
        let nanos = if int_part.starts_with('-') { -fraction } else { fraction };
        Ok(Self { seconds, nanos })
    }

    /// The duration Envoy uses, or why Envoy refuses it.
    pub(crate) fn to_std(self) -> Result<Duration, DurationError> {
        if self.seconds < 0 || self.nanos < 0 {
            return Err(DurationError::Negative);
        }
        let seconds = self.seconds.unsigned_abs();
        let nanos = u32::try_from(self.nanos).ok().filter(|n| *n <= MAX_NANOS).ok_or(DurationError::NanosOutOfRange)?;
        if seconds > MAX_ENVOY_SECONDS {
            return Err(DurationError::TooLong);
        }
        Ok(Duration::new(seconds, nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Result<Duration, DurationError> {
        ProtoDuration::parse(text).and_then(ProtoDuration::to_std)
    }

    #[test]
    fn the_proto3_json_forms_envoy_writes_are_read() {
        for (text, expected) in [
            ("1s", Duration::from_secs(1)),
            ("0.25s", Duration::from_millis(250)),
            ("1.5s", Duration::from_millis(1500)),
            ("0s", Duration::ZERO),
            ("-0s", Duration::ZERO),
            ("015s", Duration::from_secs(15)),
            ("0.000000001s", Duration::from_nanos(1)),
            ("3600.100s", Duration::from_millis(3_600_100)),
            ("9223372036s", Duration::from_secs(9_223_372_036)),
        ] {
            assert_eq!(parsed(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn strings_protobuf_refuses_are_refused() {
        for text in [
            "1000ms",
            "1m",
            "1h",
            "1",
            "s",
            "-s",
            ".5s",
            "1.s",
            "+1s",
            " 1s",
            "1s ",
            "1 s",
            "1e3s",
            "1.5e1s",
            "1_0s",
            "1.1234567891s",
            "--1s",
            "1-2s",
            "1.5ss",
            "",
            "infs",
            "NaNs",
            "１s",
        ] {
            assert_eq!(parsed(text), Err(DurationError::Syntax(text.to_owned())), "{text:?}");
        }
    }

    #[test]
    fn negative_and_overlong_durations_are_refused_as_envoy_refuses_them() {
        assert_eq!(parsed("-1s"), Err(DurationError::Negative));
        assert_eq!(parsed("-0.5s"), Err(DurationError::Negative));
        assert_eq!(parsed("9223372037s"), Err(DurationError::TooLong));
        assert_eq!(parsed("315576000001s"), Err(DurationError::OutOfProtoRange));
        assert_eq!(parsed("-315576000001s"), Err(DurationError::OutOfProtoRange));
        assert_eq!(parsed("99999999999999999999s"), Err(DurationError::Syntax("99999999999999999999s".into())));
        let parts = |seconds, nanos| ProtoDuration { seconds, nanos }.to_std();
        assert_eq!(parts(1, 1_000_000_000), Err(DurationError::NanosOutOfRange));
        assert_eq!(parts(1, -1), Err(DurationError::Negative));
        assert_eq!(parts(2, 500_000_000), Ok(Duration::from_millis(2500)));
    }
}
