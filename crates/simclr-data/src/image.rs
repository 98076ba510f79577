//! The in-memory image every reader produces and every transform consumes.

use std::sync::Arc;

/// An 8-bit image stored row-major, interleaved (`HWC`): `data[(y * width + x) * channels + c]`.
///
/// Only one (grayscale) and three (RGB) channels exist: readers convert everything else
/// (palette, 16-bit, alpha) on load, so downstream code has two cases to handle, not twenty.
/// The pixel buffer is reference-counted, so cloning an `Image` is cheap: datasets hand out
/// clones of their decoded images without copying pixels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    width: u32,
    height: u32,
    channels: u8,
    data: Arc<[u8]>,
}

/// Why an [`Image`] could not be built from raw parts.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageError {
    /// Width or height is zero.
    #[error("image has zero size ({width}x{height}); images must be at least 1x1")]
    ZeroSize {
        /// Width given.
        width: u32,
        /// Height given.
        height: u32,
    },
    /// A channel count other than 1 or 3.
    #[error("image has {0} channels; expected 1 (grayscale) or 3 (RGB)")]
    Channels(u8),
    /// The buffer length does not match `width * height * channels`.
    #[error(
        "pixel buffer holds {found} bytes; a {width}x{height}x{channels} image needs {expected}"
    )]
    Length {
        /// Width given.
        width: u32,
        /// Height given.
        height: u32,
        /// Channels given.
        channels: u8,
        /// `width * height * channels`.
        expected: usize,
        /// Bytes actually given.
        found: usize,
    },
}

impl Image {
    /// Builds an image from an interleaved `HWC` byte buffer, checking its size.
    pub fn new(
        width: u32,
        height: u32,
        channels: u8,
        data: impl Into<Arc<[u8]>>,
    ) -> Result<Self, ImageError> {
        if width == 0 || height == 0 {
            return Err(ImageError::ZeroSize { width, height });
        }
        if channels != 1 && channels != 3 {
            return Err(ImageError::Channels(channels));
        }
        let data = data.into();
        let expected = width as usize * height as usize * channels as usize;
        if data.len() != expected {
            return Err(ImageError::Length {
                width,
                height,
                channels,
                expected,
                found: data.len(),
            });
        }
        Ok(Self {
            width,
            height,
            channels,
            data,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Channel count: 1 (grayscale) or 3 (RGB).
    pub fn channels(&self) -> u8 {
        self.channels
    }

    /// The interleaved `HWC` pixel bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The `channels` bytes of pixel `(x, y)`.
    ///
    /// # Panics
    /// If `(x, y)` lies outside the image.
    pub fn pixel(&self, x: u32, y: u32) -> &[u8] {
        assert!(
            x < self.width && y < self.height,
            "pixel ({x}, {y}) outside {}x{}",
            self.width,
            self.height
        );
        let c = self.channels as usize;
        let i = (y as usize * self.width as usize + x as usize) * c;
        &self.data[i..i + c]
    }

    /// This image with three channels: grayscale values are replicated into R, G and B; an
    /// RGB image is returned as is (a cheap clone).
    pub fn to_rgb(&self) -> Self {
        if self.channels == 3 {
            return self.clone();
        }
        let rgb: Vec<u8> = self.data.iter().flat_map(|&v| [v, v, v]).collect();
        Self {
            width: self.width,
            height: self.height,
            channels: 3,
            data: rgb.into(),
        }
    }

    /// Converts a decoded image of any colour type: grayscale (with or without alpha, any bit
    /// depth) becomes 1 channel, everything else 3-channel RGB. Alpha is dropped.
    pub fn from_dynamic(img: &image::DynamicImage) -> Result<Self, ImageError> {
        use image::DynamicImage as D;
        match img {
            D::ImageLuma8(_) | D::ImageLumaA8(_) | D::ImageLuma16(_) | D::ImageLumaA16(_) => {
                let g = img.to_luma8();
                Self::new(g.width(), g.height(), 1, g.into_raw())
            }
            _ => {
                let rgb = img.to_rgb8();
                Self::new(rgb.width(), rgb.height(), 3, rgb.into_raw())
            }
        }
    }

    /// Converts to an `image` crate buffer (`Luma8` or `Rgb8`), e.g. to save as PNG.
    pub fn to_dynamic(&self) -> image::DynamicImage {
        let raw = self.data.to_vec();
        match self.channels {
            1 => image::DynamicImage::ImageLuma8(
                image::GrayImage::from_raw(self.width, self.height, raw)
                    .expect("size checked at construction"),
            ),
            _ => image::DynamicImage::ImageRgb8(
                image::RgbImage::from_raw(self.width, self.height, raw)
                    .expect("size checked at construction"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_size_channels_and_length() {
        assert!(Image::new(2, 1, 3, vec![0u8; 6]).is_ok());
        assert_eq!(
            Image::new(0, 1, 1, vec![]),
            Err(ImageError::ZeroSize {
                width: 0,
                height: 1
            })
        );
        assert_eq!(
            Image::new(1, 1, 4, vec![0u8; 4]),
            Err(ImageError::Channels(4))
        );
        assert!(matches!(
            Image::new(2, 2, 1, vec![0u8; 3]),
            Err(ImageError::Length {
                expected: 4,
                found: 3,
                ..
            })
        ));
    }

    #[test]
    fn pixel_indexing_is_row_major_interleaved() {
        let img = Image::new(2, 2, 3, (0u8..12).collect::<Vec<_>>()).unwrap();
        assert_eq!(img.pixel(0, 0), &[0, 1, 2]);
        assert_eq!(img.pixel(1, 0), &[3, 4, 5]);
        assert_eq!(img.pixel(0, 1), &[6, 7, 8]);
    }

    #[test]
    fn to_rgb_replicates_gray() {
        let gray = Image::new(2, 1, 1, vec![5u8, 9]).unwrap();
        let rgb = gray.to_rgb();
        assert_eq!((rgb.channels(), rgb.data()), (3, &[5, 5, 5, 9, 9, 9][..]));
        assert_eq!(rgb.to_rgb(), rgb);
    }

    #[test]
    fn dynamic_round_trip_keeps_pixels() {
        let img = Image::new(3, 2, 3, (0u8..18).collect::<Vec<_>>()).unwrap();
        assert_eq!(Image::from_dynamic(&img.to_dynamic()).unwrap(), img);
        let gray = Image::new(3, 2, 1, (0u8..6).collect::<Vec<_>>()).unwrap();
        assert_eq!(Image::from_dynamic(&gray.to_dynamic()).unwrap(), gray);
    }
}
