//! `strftime_now(format)` for chat templates: the local time formatted as Python's
//! `datetime.now().strftime(format)` formats it, without a date-time dependency.

use std::fmt::Write as _;

/// `strftime_now(format)`: the local time formatted like Python's `datetime.now().strftime(format)`.
pub(super) fn strftime_now(format: String) -> String {
    strftime(&format, &now_local())
}

/// A broken-down local time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DateTime {
    year: i64,
    /// 1..=12
    month: u32,
    /// 1..=31
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    microsecond: u32,
    /// 0 = Sunday
    weekday: u32,
    /// 0-based day of the year
    yearday: u32,
}

impl DateTime {
    /// The UTC time `secs` after the Unix epoch (Howard Hinnant's days-to-civil algorithm).
    fn from_unix_utc(secs: i64, microsecond: u32) -> Self {
        let days = secs.div_euclid(86_400);
        let tod = secs.rem_euclid(86_400) as u32;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
        let year = yoe + era * 400 + i64::from(month <= 2);
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        const CUMULATIVE: [u32; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
        let yearday = CUMULATIVE[month as usize - 1] + day - 1 + u32::from(leap && month > 2);
        DateTime {
            year,
            month,
            day,
            hour: tod / 3600,
            minute: tod / 60 % 60,
            second: tod % 60,
            microsecond,
            weekday: (days + 4).rem_euclid(7) as u32,
            yearday,
        }
    }
}

fn now_local() -> DateTime {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(now.as_secs()).unwrap_or(0);
    let utc = DateTime::from_unix_utc(secs, now.subsec_micros());
    #[cfg(unix)]
    {
        let t = secs as libc::time_t;
        // SAFETY: `tm` is plain data (a zeroed pointer field is a null pointer); localtime_r reads
        // `t` and writes only into `tm`, and is thread-safe. It returns null on failure.
        let local = unsafe {
            let mut tm: libc::tm = std::mem::zeroed();
            (!libc::localtime_r(&t, &mut tm).is_null()).then_some(tm)
        };
        if let Some(tm) = local {
            return DateTime {
                year: i64::from(tm.tm_year) + 1900,
                month: (tm.tm_mon + 1).clamp(1, 12) as u32,
                day: tm.tm_mday.clamp(1, 31) as u32,
                hour: tm.tm_hour.clamp(0, 23) as u32,
                minute: tm.tm_min.clamp(0, 59) as u32,
                second: tm.tm_sec.clamp(0, 60) as u32,
                microsecond: utc.microsecond,
                weekday: tm.tm_wday.clamp(0, 6) as u32,
                yearday: tm.tm_yday.clamp(0, 365) as u32,
            };
        }
    }
    utc
}

/// C-locale `strftime` as Python's `datetime.strftime` applies it to a naive datetime (`%z` and
/// `%Z` are empty, `%f` is microseconds). Unknown directives are copied through.
fn strftime(format: &str, t: &DateTime) -> String {
    const DAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let day_name = DAYS[t.weekday as usize % 7];
    let month_name = MONTHS[(t.month as usize + 11) % 12];
    let hour12 = if t.hour.is_multiple_of(12) { 12 } else { t.hour % 12 };
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let Some(d) = chars.next() else {
            out.push('%');
            break;
        };
        let _ = match d {
            'a' => write!(out, "{}", &day_name[..3]),
            'A' => write!(out, "{day_name}"),
            'b' | 'h' => write!(out, "{}", &month_name[..3]),
            'B' => write!(out, "{month_name}"),
            'c' => write!(
                out,
                "{} {} {:2} {:02}:{:02}:{:02} {}",
                &day_name[..3],
                &month_name[..3],
                t.day,
                t.hour,
                t.minute,
                t.second,
                t.year
            ),
            'C' => write!(out, "{:02}", t.year.div_euclid(100)),
            'd' => write!(out, "{:02}", t.day),
            'D' | 'x' => write!(out, "{:02}/{:02}/{:02}", t.month, t.day, t.year.rem_euclid(100)),
            'e' => write!(out, "{:2}", t.day),
            'f' => write!(out, "{:06}", t.microsecond),
            'F' => write!(out, "{}-{:02}-{:02}", t.year, t.month, t.day),
            'H' => write!(out, "{:02}", t.hour),
            'I' => write!(out, "{hour12:02}"),
            'j' => write!(out, "{:03}", t.yearday + 1),
            'm' => write!(out, "{:02}", t.month),
            'M' => write!(out, "{:02}", t.minute),
            'n' => {
                out.push('\n');
                Ok(())
            }
            'p' => write!(out, "{}", if t.hour < 12 { "AM" } else { "PM" }),
            'r' => write!(out, "{hour12:02}:{:02}:{:02} {}", t.minute, t.second, if t.hour < 12 { "AM" } else { "PM" }),
            'R' => write!(out, "{:02}:{:02}", t.hour, t.minute),
            'S' => write!(out, "{:02}", t.second),
            't' => {
                out.push('\t');
                Ok(())
            }
            'T' | 'X' => write!(out, "{:02}:{:02}:{:02}", t.hour, t.minute, t.second),
            'u' => write!(out, "{}", if t.weekday == 0 { 7 } else { t.weekday }),
            'w' => write!(out, "{}", t.weekday),
            'y' => write!(out, "{:02}", t.year.rem_euclid(100)),
            'Y' => write!(out, "{}", t.year),
            'z' | 'Z' => Ok(()),
            '%' => write!(out, "%"),
            other => write!(out, "%{other}"),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_a_date() {
        // 2024-02-29 13:05:09 UTC, a Thursday, day 60.
        let t = DateTime::from_unix_utc(1_709_211_909, 42);
        assert_eq!(
            strftime("%a %A %b %B %d %e %H %I %j %m %M %p %S %y %Y %F %T %f %z%Z %% %Q", &t),
            "Thu Thursday Feb February 29 29 13 01 060 02 05 PM 09 24 2024 2024-02-29 13:05:09 000042  % %Q"
        );
        assert_eq!(DateTime::from_unix_utc(0, 0).weekday, 4);
        assert_eq!(DateTime::from_unix_utc(-1, 0).year, 1969);
    }
}
