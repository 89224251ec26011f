//! How the device's state moves the cascade's threshold: heat and low power escalate more
//! readily (generating locally heats the phone and drains its battery), a metered network less
//! readily (every escalation costs the user data). Offline and background are routing rules in
//! [`super::route`].

use crate::config::DeviceConfig;
use crate::types::{DeviceState, Network, Reason, Thermal};

/// The shift of the cascade's threshold for one device state, in the signal's own units, with
/// the reasons behind it. Positive is towards escalating.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Shift {
    /// Towards escalating, and why (thermal or low_power).
    pub more: Option<(f64, Reason)>,
    /// Towards keeping the local answer, and why (metered).
    pub less: Option<(f64, Reason)>,
}

impl Shift {
    /// No shift.
    pub const NONE: Shift = Shift {
        more: None,
        less: None,
    };

    /// From the reported state and the `[device]` section.
    pub fn of(state: &DeviceState, cfg: &DeviceConfig) -> Self {
        let hot = matches!(state.thermal, Thermal::Serious | Thermal::Critical);
        let low_battery = !state.charging && state.battery.is_some_and(|b| b <= cfg.low_battery);
        let more = if hot {
            Some((cfg.hot_threshold_shift, Reason::Thermal))
        } else if state.low_power || low_battery {
            Some((cfg.hot_threshold_shift, Reason::LowPower))
        } else {
            None
        };
        let less = (state.network == Network::Metered)
            .then_some((cfg.metered_threshold_shift, Reason::Metered));
        Self {
            more: more.filter(|(s, _)| *s > 0.0),
            less: less.filter(|(s, _)| *s > 0.0),
        }
    }

    /// The net shift towards escalating.
    pub fn net(&self) -> f64 {
        self.more.map_or(0.0, |m| m.0) - self.less.map_or(0.0, |l| l.0)
    }

    /// The reason to give when the shift, not the signal alone, decided: the side the net
    /// shift leans to.
    pub fn reason(&self) -> Option<Reason> {
        let net = self.net();
        if net > 0.0 {
            self.more.map(|m| m.1)
        } else if net < 0.0 {
            self.less.map(|l| l.1)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_state_shifts_its_way() {
        let cfg = DeviceConfig::default();
        let s = |state: DeviceState| Shift::of(&state, &cfg);
        assert_eq!(s(DeviceState::default()), Shift::NONE);
        let fair = s(DeviceState {
            thermal: Thermal::Fair,
            ..DeviceState::default()
        });
        assert_eq!(fair.net(), 0.0, "fair heat is normal use");
        for t in [Thermal::Serious, Thermal::Critical] {
            let hot = s(DeviceState {
                thermal: t,
                ..DeviceState::default()
            });
            assert_eq!((hot.net(), hot.reason()), (0.15, Some(Reason::Thermal)));
        }
        let saver = s(DeviceState {
            low_power: true,
            ..DeviceState::default()
        });
        assert_eq!(saver.reason(), Some(Reason::LowPower));
        let low = DeviceState {
            battery: Some(0.1),
            ..DeviceState::default()
        };
        assert_eq!(s(low).reason(), Some(Reason::LowPower));
        let charging = DeviceState {
            charging: true,
            ..low
        };
        assert_eq!(
            s(charging),
            Shift::NONE,
            "a charging battery is not low power"
        );
        let metered = s(DeviceState {
            network: Network::Metered,
            ..DeviceState::default()
        });
        assert_eq!(
            (metered.net(), metered.reason()),
            (-0.15, Some(Reason::Metered))
        );
        let both = s(DeviceState {
            network: Network::Metered,
            thermal: Thermal::Critical,
            ..DeviceState::default()
        });
        assert_eq!((both.net(), both.reason()), (0.0, None), "they cancel out");
        let off = Shift::of(
            &DeviceState {
                thermal: Thermal::Critical,
                ..DeviceState::default()
            },
            &DeviceConfig {
                hot_threshold_shift: 0.0,
                ..cfg
            },
        );
        assert_eq!(off, Shift::NONE, "a zero shift turns it off");
    }
}
