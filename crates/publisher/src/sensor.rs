//! The simulated sensor: plausible, slowly drifting temperature and humidity values,
//! cheap enough to compute a million times a second.

/// Deterministic readings for one device.
pub struct Sensor {
    state: u64,
}

impl Sensor {
    pub fn new(seed: u64) -> Self {
        Sensor { state: seed | 1 }
    }

    /// Temperature (°C) and relative humidity (%) for reading number `seq`.
    pub fn sample(&mut self, seq: u64) -> (f32, f32) {
        // xorshift for a little noise on top of a slow daily-like wave.
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        let noise = (self.state % 1000) as f32 / 1000.0 - 0.5;
        let phase = (seq % 86_400) as f32 / 86_400.0 * std::f32::consts::TAU;
        let temperature = 21.0 + 4.0 * phase.sin() + 0.2 * noise;
        let humidity = 45.0 - 10.0 * phase.sin() + noise;
        (temperature, humidity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_stay_plausible() {
        let mut s = Sensor::new(7);
        for seq in 1..100_000 {
            let (t, h) = s.sample(seq);
            assert!(
                (16.0..26.0).contains(&t) && (30.0..60.0).contains(&h),
                "{t} {h}"
            );
        }
    }
}
