//! A minimal PNG writer (one IDAT, no filtering) over `flate2` and `crc32fast`, for the
//! images the bot draws itself: enough for a chart or a QR code, no image library needed.

use std::io::Write;

use flate2::Compression;
use flate2::write::ZlibEncoder;

/// The pixel formats written here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// 1 bit per pixel, 0 = black, 1 = white (packed, most significant bit first).
    Gray1,
    /// 3 bytes per pixel.
    Rgb8,
}

impl Format {
    /// `(bit depth, colour type)` of the IHDR chunk.
    fn ihdr(self) -> (u8, u8) {
        match self {
            Format::Gray1 => (1, 0),
            Format::Rgb8 => (8, 2),
        }
    }

    /// Bytes of one row of `width` pixels.
    pub fn row_bytes(self, width: u32) -> usize {
        match self {
            Format::Gray1 => (width as usize).div_ceil(8),
            Format::Rgb8 => width as usize * 3,
        }
    }
}

/// Encodes `pixels` (`height` rows of [`Format::row_bytes`] each, top to bottom) as a PNG.
pub fn encode(width: u32, height: u32, format: Format, pixels: &[u8]) -> std::io::Result<Vec<u8>> {
    let row = format.row_bytes(width);
    if pixels.len() != row * height as usize {
        return Err(std::io::Error::other(format!(
            "{} bytes of pixels for a {width}×{height} image of {row}-byte rows",
            pixels.len()
        )));
    }
    // The fastest level: QR codes and charts are long runs of one colour, which it packs
    // nearly as small as the default level at a fraction of the CPU.
    let mut zlib = ZlibEncoder::new(Vec::new(), Compression::fast());
    for line in pixels.chunks(row.max(1)) {
        // Filter type 0 (none) before each row.
        zlib.write_all(&[0])?;
        zlib.write_all(line)?;
    }
    let idat = zlib.finish()?;

    let (depth, colour) = format.ihdr();
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    // Deflate, adaptive filtering, no interlace.
    ihdr.extend_from_slice(&[depth, colour, 0, 0, 0]);

    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    Ok(out)
}

/// Appends one chunk: length, type, data, CRC-32 of type and data.
fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let mut crc = crc32fast::Hasher::new();
    crc.update(kind);
    crc.update(data);
    out.extend_from_slice(&crc.finalize().to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decoded by the `png` crate: the writer is checked by an independent reader.
    #[test]
    fn a_decoder_reads_back_every_pixel() {
        let (width, height) = (5, 3);
        let pixels: Vec<u8> = (0..width * height * 3).map(|i| (i * 7) as u8).collect();
        let bytes = encode(width, height, Format::Rgb8, &pixels).unwrap();
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (width, height));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(&buf[..info.buffer_size()], &pixels[..]);

        let gray = encode(
            10,
            2,
            Format::Gray1,
            &[0b1010_1010, 0b1100_0000, 0xFF, 0xFF],
        )
        .unwrap();
        let mut reader = png::Decoder::new(std::io::Cursor::new(gray))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(
            (info.width, info.height, info.bit_depth),
            (10, 2, png::BitDepth::One)
        );
        assert_eq!(&buf[..2], &[0b1010_1010, 0b1100_0000]);

        assert!(encode(2, 2, Format::Rgb8, &[0; 11]).is_err());
    }
}
