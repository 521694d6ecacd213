//! The `/admin` chart: net revenue per provider and day, as grouped bars, one panel per
//! currency (amounts of different currencies are never drawn on one scale). Drawn into an
//! RGB buffer here — axes, bars, a legend and labels in a built-in 3×5 pixel font — and
//! written with [`crate::png`]; no plotting library.

use chrono::{Days, NaiveDate};
use domain::Money;
use domain::analytics::Series;
use domain::money::Currency;

use crate::png::{self, Format};

/// Image width in pixels.
pub const WIDTH: u32 = 900;
/// Image height in pixels, whatever the number of panels.
pub const HEIGHT: u32 = 540;

const LEFT: u32 = 16;
const RIGHT: u32 = 16;
const TOP: u32 = 72;
const BOTTOM: u32 = 28;
/// Between panels: room for the next panel's label.
const GAP: u32 = 28;
/// Font pixels per glyph pixel.
const SCALE: u32 = 2;

type Rgb = [u8; 3];
const WHITE: Rgb = [255, 255, 255];
const INK: Rgb = [40, 40, 40];
const GRID: Rgb = [225, 225, 225];
/// Colours of the known providers; others take the spare ones in order.
const KNOWN: [(&str, Rgb); 3] = [
    ("yookassa", [37, 99, 235]),
    ("telegram", [234, 128, 24]),
    ("crypto", [22, 163, 74]),
];
const SPARE: [Rgb; 4] = [
    [147, 51, 234],
    [220, 38, 38],
    [8, 145, 178],
    [120, 113, 108],
];

/// The colour of each provider in `series`, in order of first appearance.
pub fn palette(series: &[Series]) -> Vec<(String, Rgb)> {
    let mut out: Vec<(String, Rgb)> = Vec::new();
    let mut spare = SPARE.iter().cycle();
    for s in series {
        if out.iter().any(|(name, _)| *name == s.provider) {
            continue;
        }
        let colour = KNOWN
            .iter()
            .find(|(name, _)| *name == s.provider)
            .map(|(_, c)| *c)
            .or_else(|| spare.next().copied())
            .unwrap_or(INK);
        out.push((s.provider.clone(), colour));
    }
    out
}

/// Renders the daily series of `days` days from `first` as a [`WIDTH`]×[`HEIGHT`] PNG.
pub fn daily_revenue(series: &[Series], first: NaiveDate, days: u32) -> std::io::Result<Vec<u8>> {
    let days = days.max(1);
    let mut canvas = Canvas::new(WIDTH, HEIGHT);
    let colours = palette(series);
    canvas.text(
        LEFT,
        10,
        &format!("NET REVENUE PER DAY, {days} DAYS FROM {first} (UTC)"),
        INK,
    );
    // Legend.
    let mut x = LEFT;
    for (name, colour) in &colours {
        canvas.rect(x, 32, 12, 12, *colour);
        canvas.text(x + 18, 33, name, INK);
        x += 18 + text_width(name) + 24;
    }

    let currencies: Vec<Currency> = Currency::ALL
        .into_iter()
        .filter(|c| series.iter().any(|s| s.currency == *c))
        .collect();
    let panels = currencies.len().max(1) as u32;
    let plot_height = (HEIGHT - TOP - BOTTOM - GAP * (panels - 1)) / panels;
    let plot_width = WIDTH - LEFT - RIGHT;
    let slot = plot_width / days;
    let plot_left = LEFT + (plot_width - slot * days) / 2;

    for (i, currency) in currencies.iter().enumerate() {
        let top = TOP + i as u32 * (plot_height + GAP);
        let bottom = top + plot_height;
        let in_panel: Vec<&Series> = series.iter().filter(|s| s.currency == *currency).collect();
        let max = in_panel
            .iter()
            .flat_map(|s| s.days.iter().map(|d| d.net_minor))
            .max()
            .unwrap_or(0)
            .max(1);
        // Grid at quarters, then the label of the top line.
        for q in 0..4 {
            canvas.rect(plot_left, top + q * plot_height / 4, slot * days, 1, GRID);
        }
        let label = format!(
            "{} MAX {}",
            currency.code(),
            Money::new(max, *currency).to_decimal_string()
        );
        canvas.rect(plot_left, top - 14, text_width(&label) + 4, 12, WHITE);
        canvas.text(plot_left, top - 13, &label, INK);

        let bars = in_panel.len().max(1) as u32;
        let bar = ((slot.saturating_sub(2)) / bars).max(1);
        for (k, s) in in_panel.iter().enumerate() {
            let colour = colours
                .iter()
                .find(|(name, _)| *name == s.provider)
                .map_or(INK, |(_, c)| *c);
            for point in &s.days {
                let Some(day) = day_index(first, point.day, days) else {
                    continue;
                };
                let height = scaled(point.net_minor, max, plot_height);
                let x = plot_left + day * slot + 1 + k as u32 * bar;
                canvas.rect(x, bottom - height, bar, height, colour);
            }
        }
        // Axes.
        canvas.rect(plot_left, bottom, slot * days, 1, INK);
        canvas.rect(plot_left, top, 1, plot_height + 1, INK);
    }
    if currencies.is_empty() {
        canvas.text(LEFT, TOP + 8, "NO PAID PAYMENTS IN THESE DAYS", INK);
    }
    // Day-of-month labels under the last panel: every fifth day and the last one.
    let base = HEIGHT - BOTTOM + 8;
    for day in 0..days {
        if day % 5 != 0 && day + 1 != days {
            continue;
        }
        let Some(date) = first.checked_add_days(Days::new(u64::from(day))) else {
            continue;
        };
        let label = date.format("%d").to_string();
        canvas.rect(plot_left + day * slot + slot / 2, base - 8, 1, 4, INK);
        canvas.text(plot_left + day * slot + slot / 2 - 6, base - 2, &label, INK);
    }
    png::encode(WIDTH, HEIGHT, Format::Rgb8, &canvas.pixels)
}

/// Where `day` falls in the `days` days from `first`.
fn day_index(first: NaiveDate, day: NaiveDate, days: u32) -> Option<u32> {
    let offset = u32::try_from((day - first).num_days()).ok()?;
    (offset < days).then_some(offset)
}

/// `value` of `max` as pixels of `height` (rounded, a positive value at least 1 px).
fn scaled(value: i64, max: i64, height: u32) -> u32 {
    if value <= 0 {
        return 0;
    }
    let px = (i128::from(value) * i128::from(height) * 2 + i128::from(max)) / (2 * i128::from(max));
    u32::try_from(px).unwrap_or(height).clamp(1, height)
}

fn text_width(text: &str) -> u32 {
    text.chars().count() as u32 * 4 * SCALE
}

struct Canvas {
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

impl Canvas {
    fn new(width: u32, height: u32) -> Self {
        Self {
            width,
            height,
            pixels: WHITE.repeat((width * height) as usize),
        }
    }

    /// Fills a rectangle, clipped to the canvas.
    fn rect(&mut self, x: u32, y: u32, w: u32, h: u32, colour: Rgb) {
        for row in y..(y + h).min(self.height) {
            for col in x..(x + w).min(self.width) {
                let at = ((row * self.width + col) * 3) as usize;
                self.pixels[at..at + 3].copy_from_slice(&colour);
            }
        }
    }

    /// Writes `text` (upper-cased; unknown characters blank) with its top-left at `(x, y)`.
    fn text(&mut self, x: u32, y: u32, text: &str, colour: Rgb) {
        for (i, ch) in text.chars().enumerate() {
            let left = x + i as u32 * 4 * SCALE;
            for (row, bits) in glyph(ch.to_ascii_uppercase()).iter().enumerate() {
                for col in 0..3 {
                    if bits & (0b100 >> col) != 0 {
                        self.rect(
                            left + col * SCALE,
                            y + row as u32 * SCALE,
                            SCALE,
                            SCALE,
                            colour,
                        );
                    }
                }
            }
        }
    }
}

/// A 3×5 glyph: five rows of three bits, the leftmost pixel the highest bit.
fn glyph(ch: char) -> [u8; 5] {
    match ch {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b001, 0b001, 0b001],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        'A' => [0b010, 0b101, 0b111, 0b101, 0b101],
        'B' => [0b110, 0b101, 0b110, 0b101, 0b110],
        'C' => [0b011, 0b100, 0b100, 0b100, 0b011],
        'D' => [0b110, 0b101, 0b101, 0b101, 0b110],
        'E' => [0b111, 0b100, 0b110, 0b100, 0b111],
        'F' => [0b111, 0b100, 0b110, 0b100, 0b100],
        'G' => [0b011, 0b100, 0b101, 0b101, 0b011],
        'H' => [0b101, 0b101, 0b111, 0b101, 0b101],
        'I' => [0b111, 0b010, 0b010, 0b010, 0b111],
        'J' => [0b001, 0b001, 0b001, 0b101, 0b010],
        'K' => [0b101, 0b101, 0b110, 0b101, 0b101],
        'L' => [0b100, 0b100, 0b100, 0b100, 0b111],
        'M' => [0b101, 0b111, 0b111, 0b101, 0b101],
        'N' => [0b110, 0b101, 0b101, 0b101, 0b101],
        'O' => [0b010, 0b101, 0b101, 0b101, 0b010],
        'P' => [0b110, 0b101, 0b110, 0b100, 0b100],
        'Q' => [0b010, 0b101, 0b101, 0b110, 0b011],
        'R' => [0b110, 0b101, 0b110, 0b101, 0b101],
        'S' => [0b011, 0b100, 0b010, 0b001, 0b110],
        'T' => [0b111, 0b010, 0b010, 0b010, 0b010],
        'U' => [0b101, 0b101, 0b101, 0b101, 0b111],
        'V' => [0b101, 0b101, 0b101, 0b101, 0b010],
        'W' => [0b101, 0b101, 0b111, 0b111, 0b101],
        'X' => [0b101, 0b101, 0b010, 0b101, 0b101],
        'Y' => [0b101, 0b101, 0b010, 0b010, 0b010],
        'Z' => [0b111, 0b001, 0b010, 0b100, 0b111],
        '.' => [0, 0, 0, 0, 0b010],
        ',' => [0, 0, 0, 0b010, 0b100],
        '-' => [0, 0, 0b111, 0, 0],
        ':' => [0, 0b010, 0, 0b010, 0],
        '/' => [0b001, 0b001, 0b010, 0b100, 0b100],
        '(' => [0b010, 0b100, 0b100, 0b100, 0b010],
        ')' => [0b010, 0b001, 0b001, 0b001, 0b010],
        _ => [0; 5],
    }
}

#[cfg(test)]
mod tests {
    use domain::analytics::DailyRevenue;

    use super::*;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, d).unwrap()
    }

    fn series(provider: &str, currency: Currency, days: &[(u32, i64)]) -> Series {
        Series {
            provider: provider.to_owned(),
            currency,
            days: days
                .iter()
                .map(|&(d, net_minor)| DailyRevenue {
                    day: day(d),
                    net_minor,
                })
                .collect(),
        }
    }

    /// Decodes with the `png` crate; returns the RGB pixels.
    fn decode(bytes: &[u8]) -> Vec<u8> {
        let mut reader = ::png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .expect("a valid PNG");
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).expect("pixels decode");
        assert_eq!((info.width, info.height), (WIDTH, HEIGHT));
        assert_eq!(info.color_type, ::png::ColorType::Rgb);
        assert_eq!(info.bit_depth, ::png::BitDepth::Eight);
        buf.truncate(info.buffer_size());
        buf
    }

    fn pixels_of(rgb: &[u8], colour: Rgb) -> usize {
        rgb.chunks(3).filter(|p| *p == colour).count()
    }

    #[test]
    fn renders_a_valid_png_of_the_expected_size_with_each_providers_bars() {
        let data = [
            series("crypto", Currency::Usdt, &[(29, 2_500_000)]),
            series("telegram", Currency::Rub, &[(29, 29_900)]),
            series("telegram", Currency::Xtr, &[(28, 150), (29, 300)]),
            series(
                "yookassa",
                Currency::Rub,
                &[(20, 19_900), (28, 0), (29, 10_001)],
            ),
        ];
        let bytes = daily_revenue(&data, day(1), 30).unwrap();
        let rgb = decode(&bytes);
        for (provider, colour) in KNOWN {
            assert!(pixels_of(&rgb, colour) > 100, "{provider} has bars");
        }
        // The tallest bar of a panel spans the whole plot height; a bar at about half the
        // maximum is about half as tall.
        let column_height = |colour: Rgb| -> usize {
            (0..WIDTH as usize)
                .map(|x| {
                    (0..HEIGHT as usize)
                        .filter(|y| rgb[(y * WIDTH as usize + x) * 3..][..3] == colour)
                        .count()
                })
                .max()
                .unwrap()
        };
        let panel = ((HEIGHT - TOP - BOTTOM - 2 * GAP) / 3) as usize;
        assert_eq!(
            column_height(KNOWN[2].1),
            panel,
            "crypto's only bar is its max"
        );
        assert!(column_height(KNOWN[0].1) >= 12, "legend square at least");
    }

    #[test]
    fn no_data_is_still_an_image() {
        let rgb = decode(&daily_revenue(&[], day(1), 30).unwrap());
        assert!(pixels_of(&rgb, INK) > 0, "the title and the note");
    }

    #[test]
    fn bars_scale_with_rounding() {
        assert_eq!(scaled(0, 100, 50), 0);
        assert_eq!(scaled(1, 1_000_000, 50), 1);
        assert_eq!(scaled(50, 100, 50), 25);
        assert_eq!(scaled(100, 100, 50), 50);
        assert_eq!(day_index(day(1), day(30), 30), Some(29));
        assert_eq!(day_index(day(2), day(1), 30), None);
    }
}
