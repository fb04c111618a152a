//! Working schedules: whether an agent is on shift at a given time, in their
//! own time zone (parsing lives on [`Schedule`]).

use chrono::{DateTime, Datelike, Timelike, Utc};

use crate::domain::{Schedule, Weekday};

fn weekday(d: chrono::Weekday) -> Weekday {
    match d {
        chrono::Weekday::Mon => Weekday::Mon,
        chrono::Weekday::Tue => Weekday::Tue,
        chrono::Weekday::Wed => Weekday::Wed,
        chrono::Weekday::Thu => Weekday::Thu,
        chrono::Weekday::Fri => Weekday::Fri,
        chrono::Weekday::Sat => Weekday::Sat,
        chrono::Weekday::Sun => Weekday::Sun,
    }
}

/// Whether `now` falls within the schedule. No schedule = always working.
/// A malformed schedule (rejected at input, so only from old data) counts as
/// not working rather than assigning work outside someone's hours.
pub fn is_working(schedule: Option<&Schedule>, now: DateTime<Utc>) -> bool {
    let Some(s) = schedule else { return true };
    let (Ok(tz), Ok((start, end))) = (s.time_zone(), s.hours()) else {
        return false;
    };
    let local = now.with_timezone(&tz);
    let minute = local.hour() * 60 + local.minute();
    let day = weekday(local.weekday());
    let yesterday = weekday(local.weekday().pred());
    if start <= end {
        s.days.contains(&day) && (start..end).contains(&minute)
    } else {
        // Overnight shift: the part after midnight belongs to yesterday's shift.
        (s.days.contains(&day) && minute >= start) || (s.days.contains(&yesterday) && minute < end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn sched(tz: &str, days: &[Weekday], hours: &str) -> Schedule {
        Schedule {
            tz: tz.into(),
            days: days.to_vec(),
            hours: hours.into(),
        }
    }

    #[test]
    fn weekday_hours_in_own_time_zone() {
        let s = sched(
            "America/New_York",
            &[Weekday::Mon, Weekday::Fri],
            "09:00-17:00",
        );
        // Monday 2026-11-23 14:00 UTC = 09:00 New York.
        assert!(is_working(
            Some(&s),
            Utc.with_ymd_and_hms(2026, 11, 23, 14, 0, 0).unwrap()
        ));
        assert!(!is_working(
            Some(&s),
            Utc.with_ymd_and_hms(2026, 11, 23, 13, 59, 0).unwrap()
        ));
        // Saturday is a weekend.
        assert!(!is_working(
            Some(&s),
            Utc.with_ymd_and_hms(2026, 11, 28, 15, 0, 0).unwrap()
        ));
    }

    #[test]
    fn overnight_shift_belongs_to_its_start_day() {
        let s = sched("UTC", &[Weekday::Fri], "22:00-06:00");
        assert!(is_working(
            Some(&s),
            Utc.with_ymd_and_hms(2026, 11, 27, 23, 0, 0).unwrap()
        ));
        assert!(is_working(
            Some(&s),
            Utc.with_ymd_and_hms(2026, 11, 28, 5, 0, 0).unwrap()
        ));
        assert!(!is_working(
            Some(&s),
            Utc.with_ymd_and_hms(2026, 11, 27, 5, 0, 0).unwrap()
        ));
    }

    #[test]
    fn bad_hours_are_rejected() {
        assert!(Schedule::parse_hours("9-5").is_err());
        assert_eq!(Schedule::parse_hours("09:30-17:00"), Ok((570, 1020)));
    }
}
