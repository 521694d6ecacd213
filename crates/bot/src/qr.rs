//! QR codes as PNG images, for `sendPhoto`: the wallet address at the crypto checkout and
//! the subscription link on activation, so a phone's camera or wallet app can read them.
//!
//! The module matrix comes from `qrcode` (without its `image` feature); [`crate::png`] writes
//! it as a 1-bit grayscale PNG.

use frankenstein::AsyncTelegramApi;
use frankenstein::client_reqwest::Bot as Api;
use frankenstein::input_file::FileUpload;
use frankenstein::methods::SendPhotoParams;
use frankenstein::response::ErrorResponse;
use frankenstein::types::{InlineKeyboardMarkup, ReplyMarkup};
use qrcode::{Color, EcLevel, QrCode};
use reqwest::multipart::{Form, Part};

use crate::png::{self, Format};

/// Pixels per module: a version-6 code (a typical subscription link) is 41 modules, with
/// the quiet zone 49 → 392 px, sharp after Telegram's recompression.
pub const SCALE: usize = 8;
/// The light border the QR standard asks for, in modules.
pub const QUIET_ZONE: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum QrError {
    #[error("cannot encode the data as a QR code: {0}")]
    Encode(#[from] qrcode::types::QrError),
    #[error("cannot write the PNG: {0}")]
    Png(#[from] std::io::Error),
}

/// A QR code rendered as a PNG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QrPng {
    /// The PNG file.
    pub bytes: Vec<u8>,
    /// Width and height in pixels.
    pub side: usize,
}

/// Encodes `data` (medium error correction) and renders it as a black-on-white PNG.
pub fn png(data: &str) -> Result<QrPng, QrError> {
    let code = QrCode::with_error_correction_level(data.as_bytes(), EcLevel::M)?;
    render(&code)
}

fn render(code: &QrCode) -> Result<QrPng, QrError> {
    let modules = code.width();
    let side = (modules + 2 * QUIET_ZONE) * SCALE;
    let side_u32 = u32::try_from(side).map_err(std::io::Error::other)?;
    let row_bytes = Format::Gray1.row_bytes(side_u32);
    // 1 bit a pixel, 1 = white: start white, clear the dark modules' pixels. The SCALE pixel
    // rows of a module row are the same: each is drawn once and copied.
    let mut pixels = vec![0xFF_u8; row_bytes * side];
    for my in 0..modules {
        let top = (QUIET_ZONE + my) * SCALE;
        let (above, rest) = pixels.split_at_mut((top + 1) * row_bytes);
        let row = &mut above[top * row_bytes..];
        for mx in (0..modules).filter(|&mx| code[(mx, my)] == Color::Dark) {
            let left = (QUIET_ZONE + mx) * SCALE;
            for x in left..left + SCALE {
                row[x / 8] &= !(0x80 >> (x % 8));
            }
        }
        for copy in rest[..(SCALE - 1) * row_bytes].chunks_mut(row_bytes) {
            copy.copy_from_slice(row);
        }
    }
    let bytes = png::encode(side_u32, side_u32, Format::Gray1, &pixels)?;
    Ok(QrPng { bytes, side })
}

/// Uploads the PNG `image` (named `file_name`) with `sendPhoto` (multipart, as Telegram takes
/// new files), with an optional caption and inline keyboard. frankenstein uploads files only
/// from a path, so the form is built here on its client and URL; errors come back in
/// frankenstein's shape, so callers treat them as any other Bot API error. Returns the
/// `file_id` Telegram gave the photo (its largest size), to send it again without an upload.
pub async fn send_photo(
    api: &Api,
    chat: i64,
    image: &[u8],
    file_name: &str,
    caption: Option<&str>,
    markup: Option<&InlineKeyboardMarkup>,
) -> Result<Option<String>, frankenstein::Error> {
    let mut form = Form::new().text("chat_id", chat.to_string());
    if let Some(caption) = caption {
        form = form.text("caption", caption.to_owned());
    }
    if let Some(markup) = markup {
        let json =
            serde_json::to_string(markup).map_err(|source| frankenstein::Error::JsonEncode {
                source,
                input: format!("{markup:?}"),
            })?;
        form = form.text("reply_markup", json);
    }
    let part = Part::bytes(image.to_vec())
        .file_name(file_name.to_owned())
        .mime_str("image/png")?;
    form = form.part("photo", part);
    // Telegram allows a bot about 30 messages a second: wait for a slot (TELEGRAM_API_LIMIT).
    ratelimit::TELEGRAM.wait().await;
    let response = api
        .client
        .post(format!("{}/sendPhoto", api.api_url))
        .multipart(form)
        .send()
        .await?;
    let success = response.status().is_success();
    let body = response.text().await?;
    if success {
        return Ok(largest_file_id(&body));
    }
    Err(match serde_json::from_str::<ErrorResponse>(&body) {
        Ok(error) => frankenstein::Error::Api(error),
        Err(source) => frankenstein::Error::JsonDecode {
            source,
            input: body,
        },
    })
}

/// The `file_id` of the largest size in a `sendPhoto` answer (`result.photo[]`).
fn largest_file_id(answer: &str) -> Option<String> {
    let answer: serde_json::Value = serde_json::from_str(answer).ok()?;
    answer["result"]["photo"]
        .as_array()?
        .iter()
        .max_by_key(|size| size["width"].as_u64().unwrap_or(0))?["file_id"]
        .as_str()
        .map(str::to_owned)
}

/// Sends a photo Telegram already holds, by its `file_id`.
pub async fn send_photo_by_id(
    api: &Api,
    chat: i64,
    file_id: &str,
    caption: Option<&str>,
    markup: Option<&InlineKeyboardMarkup>,
) -> Result<(), frankenstein::Error> {
    let params = SendPhotoParams::builder()
        .chat_id(chat)
        .photo(FileUpload::String(file_id.to_owned()))
        .maybe_caption(caption.map(str::to_owned))
        .maybe_reply_markup(markup.cloned().map(ReplyMarkup::InlineKeyboardMarkup))
        .build();
    ratelimit::TELEGRAM.wait().await;
    api.send_photo(&params).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decoded by the `png` crate (an independent reader): 1-bit grayscale rows.
    fn decode(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let mut reader = ::png::Decoder::new(std::io::Cursor::new(bytes.to_vec()))
            .read_info()
            .expect("a PNG");
        let mut buf = vec![0; reader.output_buffer_size().expect("size")];
        let info = reader.next_frame(&mut buf).expect("a frame");
        assert_eq!(info.color_type, ::png::ColorType::Grayscale);
        assert_eq!(info.bit_depth, ::png::BitDepth::One);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    #[test]
    fn the_png_holds_the_code_module_for_module() {
        let link = "https://vpn.example.com/sub/dGcxMjM0NTZfMSwxNzY0MDAwMDAwabcdef";
        let image = png(link).expect("encodes");
        let code = QrCode::with_error_correction_level(link.as_bytes(), EcLevel::M).unwrap();
        let modules = code.width();
        assert_eq!(image.side, (modules + 2 * QUIET_ZONE) * SCALE);

        let (width, height, pixels) = decode(&image.bytes);
        assert_eq!((width as usize, height as usize), (image.side, image.side));
        let row_bytes = image.side.div_ceil(8);
        assert_eq!(pixels.len(), image.side * row_bytes);
        let dark = |x: usize, y: usize| pixels[y * row_bytes + x / 8] & (0x80 >> (x % 8)) == 0;
        // Every pixel of every module has the module's colour; the quiet zone is white.
        for y in 0..image.side {
            for x in 0..image.side {
                let (mx, my) = (x / SCALE, y / SCALE);
                let inside = (QUIET_ZONE..QUIET_ZONE + modules).contains(&mx)
                    && (QUIET_ZONE..QUIET_ZONE + modules).contains(&my);
                let expected = inside && code[(mx - QUIET_ZONE, my - QUIET_ZONE)] == Color::Dark;
                assert_eq!(dark(x, y), expected, "pixel ({x}, {y})");
            }
        }
        // The finder pattern's corner is dark: the image is not inverted.
        assert!(dark(QUIET_ZONE * SCALE, QUIET_ZONE * SCALE));
    }

    #[test]
    fn a_wallet_address_and_an_overlong_text() {
        let address = png("TQn9Y2khEsLJW1ChVWFMSMeRDow5KcbLSE").expect("encodes");
        // Version 3 (29 modules) at medium correction.
        assert_eq!(address.side, (29 + 2 * QUIET_ZONE) * SCALE);
        assert!(address.bytes.len() < 4096, "{}", address.bytes.len());
        assert!(matches!(png(&"x".repeat(5000)), Err(QrError::Encode(_))));
    }
}
