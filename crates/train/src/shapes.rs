//! The shapes task (specs/shapes-task.md): scenes, rendering, questions, eval sets.
//!
//! Everything here is driven by a caller-supplied [`rand::Rng`]; with a seedable generator the
//! output is a pure function of the seed. The crate's convention is [`rand_chacha::ChaCha8Rng`]
//! seeded with [`SeedableRng::seed_from_u64`] (see [`rng_from_seed`]): ChaCha's stream is
//! specified and portable, so the same seed gives the same scenes, pixels and questions on every
//! platform (for a given `rand`/`rand_chacha` major version and this module's code).
//!
//! * [`Scene::sample`] draws a scene covering everything the spec allows: canvas 64..=512 on each
//!   side (not necessarily square), light background (optionally faint uniform noise), 1..=4
//!   non-overlapping objects fully inside the canvas with bounding-box sides in
//!   `[short/6, short/3]`, circles, axis-aligned squares, upright or inverted isosceles
//!   triangles of varying apex angle, 8 named colours with up to ±20 per channel, anti-aliased
//!   or not, saved as PNG or JPEG (quality 70..=100).
//! * [`render`] rasterizes a scene (4x4 supersampled coverage for anti-aliased objects, a
//!   pixel-centre test otherwise).
//! * [`all_questions`] lists every question the spec allows for a scene; [`questions_for`] picks
//!   a training set of them (every allowed kind, `exists` balanced yes/no with near misses);
//!   [`QuestionBalancer`] picks questions balanced across kinds and answers over many scenes.
//! * [`write_eval_set`] / [`read_eval_set`] write and validate the spec's directory format.
//! * [`sample_example`] draws a fresh in-memory training example (JPEG artefacts included).

mod eval_set;
mod questions;
mod render;
#[cfg(test)]
mod tests;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

pub use eval_set::{
    read_eval_set, write_eval_set, ShapesError, IMAGES_DIR, QUESTIONS_FILE, SCENES_FILE,
};
pub use questions::{
    all_answers, all_question_texts, all_questions, color_question, count_pair_for,
    count_pair_question, count_shape_question, exists_question, left_of_pairs, left_of_question,
    position_fifth, position_for, position_question, questions_for, shape_question, Candidate,
    Question, QuestionBalancer, COUNT_ALL_QUESTION, COUNT_PAIR_KIND, POSITION_KIND,
};
pub use render::{apply_format, encode_image, object_coverage, render};

/// Smallest canvas side allowed by the spec.
pub const MIN_SIDE: u32 = 64;
/// Largest canvas side allowed by the spec.
pub const MAX_SIDE: u32 = 512;
/// Most objects in a scene.
pub const MAX_OBJECTS: usize = 4;
/// Largest background noise amplitude (levels).
pub const MAX_NOISE: u8 = 8;
/// Largest deviation of a drawn colour from its reference, per channel.
pub const MAX_COLOR_DEVIATION: u8 = 20;
/// Lowest value of each background channel.
pub const MIN_BACKGROUND: u8 = 200;
/// JPEG quality range of the spec.
pub const JPEG_QUALITY: std::ops::RangeInclusive<u8> = 70..=100;
/// Distance kept from the canvas border (pixels), so that anti-aliased edges stay inside.
pub const BORDER_MARGIN: f32 = 1.0;
/// Smallest gap between two objects, measured with [`Object::sdf`]. At least `sqrt(2)` so that no
/// pixel receives coverage from two objects, even anti-aliased.
pub const MIN_GAP: f32 = 1.5;

/// The seedable generator this crate uses everywhere (ChaCha with 8 rounds).
pub type ShapesRng = ChaCha8Rng;

/// The generator for `seed`: `ChaCha8Rng::seed_from_u64(seed)`.
pub fn rng_from_seed(seed: u64) -> ShapesRng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// The three shapes of the task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Circle,
    Square,
    Triangle,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    /// The word used in questions and answers.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }

    /// The plural used by `How many {shape}s are there?`.
    pub fn plural(self) -> &'static str {
        match self {
            Shape::Circle => "circles",
            Shape::Square => "squares",
            Shape::Triangle => "triangles",
        }
    }

    pub fn from_name(name: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// The eight colours of the task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorName {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    Orange,
    Black,
    Gray,
}

impl ColorName {
    pub const ALL: [ColorName; 8] = [
        ColorName::Red,
        ColorName::Green,
        ColorName::Blue,
        ColorName::Yellow,
        ColorName::Purple,
        ColorName::Orange,
        ColorName::Black,
        ColorName::Gray,
    ];

    /// The word used in questions and answers.
    pub fn name(self) -> &'static str {
        match self {
            ColorName::Red => "red",
            ColorName::Green => "green",
            ColorName::Blue => "blue",
            ColorName::Yellow => "yellow",
            ColorName::Purple => "purple",
            ColorName::Orange => "orange",
            ColorName::Black => "black",
            ColorName::Gray => "gray",
        }
    }

    /// The spec's reference RGB.
    pub fn reference_rgb(self) -> [u8; 3] {
        match self {
            ColorName::Red => [220, 30, 30],
            ColorName::Green => [30, 160, 50],
            ColorName::Blue => [30, 60, 220],
            ColorName::Yellow => [235, 200, 20],
            ColorName::Purple => [140, 50, 170],
            ColorName::Orange => [245, 130, 20],
            ColorName::Black => [20, 20, 20],
            ColorName::Gray => [128, 128, 128],
        }
    }

    pub fn from_name(name: &str) -> Option<ColorName> {
        ColorName::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// Which way a triangle points (its apex up or down). Circles and squares are always `Up`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Orientation {
    Up,
    Down,
}

/// The question kinds of the spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    Color,
    Shape,
    CountShape,
    CountAll,
    Exists,
    LeftOf,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Color,
        Kind::Shape,
        Kind::CountShape,
        Kind::CountAll,
        Kind::Exists,
        Kind::LeftOf,
    ];

    /// The `kind` string of the evaluation format.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Color => "color",
            Kind::Shape => "shape",
            Kind::CountShape => "count_shape",
            Kind::CountAll => "count_all",
            Kind::Exists => "exists",
            Kind::LeftOf => "left_of",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How an image is stored. JPEG images are, in memory too, passed through the codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Png,
    Jpeg { quality: u8 },
}

impl ImageFormat {
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg { .. } => "jpg",
        }
    }
}

/// One drawn object. Coordinates are in pixels, with `(0, 0)` the top-left corner of the canvas
/// and pixel `(i, j)` covering `[i, i+1] x [j, j+1]` (its centre is `(i + 0.5, j + 0.5)`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Object {
    pub shape: Shape,
    pub color: ColorName,
    /// The drawn colour: the reference RGB of `color` moved by at most 20 per channel.
    pub rgb: [u8; 3],
    /// Centre of the bounding box, `[x, y]`.
    pub center: [f32; 2],
    /// Bounding box `[width, height]`; equal for circles (the diameter) and squares (the side);
    /// a triangle's `[base, height]`.
    pub size: [f32; 2],
    /// Apex up or down (triangles only; `Up` otherwise).
    pub orientation: Orientation,
    /// Drawn with anti-aliasing (supersampled coverage) or hard edges (pixel-centre test).
    pub antialias: bool,
}

impl Object {
    /// Bounding box `[x0, y0, x1, y1]`.
    pub fn bbox(&self) -> [f32; 4] {
        let [cx, cy] = self.center;
        let [w, h] = self.size;
        [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]
    }

    /// A 1-Lipschitz signed distance bound: negative inside the shape, positive outside, and
    /// `|sdf(p)|` never more than the true distance from `p` to the outline (exact for circles;
    /// for polygons the largest distance to an edge's line). Thus a pixel whose centre has
    /// `sdf <= -sqrt(1/2)` is fully covered and one with `sdf >= sqrt(1/2)` is not touched.
    #[inline]
    pub fn sdf(&self, x: f32, y: f32) -> f32 {
        let [cx, cy] = self.center;
        let [w, h] = self.size;
        let dx = x - cx;
        let dy = y - cy;
        match self.shape {
            Shape::Circle => (dx * dx + dy * dy).sqrt() - w / 2.0,
            Shape::Square => (dx.abs() - w / 2.0).max(dy.abs() - h / 2.0),
            Shape::Triangle => {
                // Apex up: apex at (cx, cy - h/2), base on y = cy + h/2. Inverted: mirror in y.
                let dy = match self.orientation {
                    Orientation::Up => dy,
                    Orientation::Down => -dy,
                };
                let hb = w / 2.0;
                let base = dy - h / 2.0;
                let side = (dx.abs() * h - (dy + h / 2.0) * hb) / (h * h + hb * hb).sqrt();
                base.max(side)
            }
        }
    }

    /// The exact geometric area of the shape.
    pub fn area(&self) -> f32 {
        let [w, h] = self.size;
        match self.shape {
            Shape::Circle => std::f32::consts::PI * w * w / 4.0,
            Shape::Square => w * h,
            Shape::Triangle => w * h / 2.0,
        }
    }
}

/// One image of the task, before rendering.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    pub width: u32,
    pub height: u32,
    /// Flat background colour, each channel in 200..=255.
    pub background: [u8; 3],
    /// Noise amplitude `a` in 0..=8: each pixel channel moves by a uniform integer in `[-a, a]`.
    pub noise: u8,
    /// Whether the noise also covers the objects (otherwise only the background).
    pub noise_on_objects: bool,
    pub objects: Vec<Object>,
    /// How the image is stored (and, in memory, which codec artefacts it gets).
    pub format: ImageFormat,
}

/// Canvas sizes that real data sets like to use; drawn some of the time.
const COMMON_SIDES: [u32; 12] = [64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 480, 512];

impl Scene {
    /// Draws a scene with 1..=4 objects (uniformly).
    pub fn sample<R: Rng + ?Sized>(rng: &mut R) -> Scene {
        let n = rng.random_range(1..=MAX_OBJECTS);
        Scene::sample_with_count(rng, n)
    }

    /// Draws a scene with `n_objects` objects (clamped to 1..=4).
    pub fn sample_with_count<R: Rng + ?Sized>(rng: &mut R, n_objects: usize) -> Scene {
        let n = n_objects.clamp(1, MAX_OBJECTS);
        let (width, height) = sample_canvas(rng);
        let background = sample_background(rng);
        let noise = if rng.random_bool(0.4) {
            0
        } else {
            rng.random_range(1..=MAX_NOISE)
        };
        let noise_on_objects = rng.random_bool(0.5);
        let format = if rng.random_bool(0.5) {
            ImageFormat::Png
        } else {
            ImageFormat::Jpeg {
                quality: rng.random_range(JPEG_QUALITY),
            }
        };
        let objects = sample_objects(rng, width, height, n);
        Scene {
            width,
            height,
            background,
            noise,
            noise_on_objects,
            objects,
            format,
        }
    }

    /// Bounds `(min, max)` of an object's bounding-box sides: 1/6 and 1/3 of the shorter side.
    pub fn size_bounds(&self) -> (f32, f32) {
        size_bounds(self.width, self.height)
    }

    /// Number of objects of `shape`.
    pub fn count_shape(&self, shape: Shape) -> usize {
        self.objects.iter().filter(|o| o.shape == shape).count()
    }

    /// Number of objects of `color`.
    pub fn count_color(&self, color: ColorName) -> usize {
        self.objects.iter().filter(|o| o.color == color).count()
    }

    /// Number of objects of `color` and `shape`.
    pub fn count(&self, color: ColorName, shape: Shape) -> usize {
        self.objects
            .iter()
            .filter(|o| o.color == color && o.shape == shape)
            .count()
    }

    /// Whether two objects are closer than [`MIN_GAP`] (or overlap).
    pub fn objects_too_close(a: &Object, b: &Object) -> bool {
        too_close(a, b, MIN_GAP)
    }
}

fn size_bounds(width: u32, height: u32) -> (f32, f32) {
    let short = width.min(height) as f32;
    (short / 6.0, short / 3.0)
}

fn sample_canvas<R: Rng + ?Sized>(rng: &mut R) -> (u32, u32) {
    match rng.random_range(0..20) {
        // Square canvases.
        0..=3 => {
            let s = rng.random_range(MIN_SIDE..=MAX_SIDE);
            (s, s)
        }
        // Common sizes, square or not.
        4..=6 => {
            let w = COMMON_SIDES[rng.random_range(0..COMMON_SIDES.len())];
            let h = if rng.random_bool(0.5) {
                w
            } else {
                COMMON_SIDES[rng.random_range(0..COMMON_SIDES.len())]
            };
            (w, h)
        }
        // Very elongated canvases (one side near the minimum).
        7 => {
            let a = rng.random_range(MIN_SIDE..=MIN_SIDE * 2);
            let b = rng.random_range(MAX_SIDE / 2..=MAX_SIDE);
            if rng.random_bool(0.5) {
                (a, b)
            } else {
                (b, a)
            }
        }
        _ => (
            rng.random_range(MIN_SIDE..=MAX_SIDE),
            rng.random_range(MIN_SIDE..=MAX_SIDE),
        ),
    }
}

fn sample_background<R: Rng + ?Sized>(rng: &mut R) -> [u8; 3] {
    match rng.random_range(0..20) {
        0..=4 => [255, 255, 255],
        5..=7 => {
            let v = rng.random_range(MIN_BACKGROUND..=255);
            [v, v, v]
        }
        _ => [
            rng.random_range(MIN_BACKGROUND..=255),
            rng.random_range(MIN_BACKGROUND..=255),
            rng.random_range(MIN_BACKGROUND..=255),
        ],
    }
}

fn sample_rgb<R: Rng + ?Sized>(rng: &mut R, color: ColorName) -> [u8; 3] {
    let reference = color.reference_rgb();
    if rng.random_bool(0.25) {
        return reference;
    }
    let d = MAX_COLOR_DEVIATION as i32;
    reference.map(|c| (c as i32 + rng.random_range(-d..=d)).clamp(0, 255) as u8)
}

/// Picks the list of shapes (and colours) a scene draws from: usually all of them, sometimes a
/// few, so that repeated shapes/colours (counts up to 4, ambiguous references) are common enough.
fn sample_palettes<R: Rng + ?Sized>(rng: &mut R) -> (Vec<Shape>, Vec<ColorName>) {
    let mut shapes = Shape::ALL.to_vec();
    match rng.random_range(0..10) {
        0 => shapes = vec![shapes[rng.random_range(0..3)]],
        1 | 2 => {
            shapes.remove(rng.random_range(0..3));
        }
        _ => {}
    }
    let mut colors = ColorName::ALL.to_vec();
    if rng.random_bool(0.3) {
        let keep = rng.random_range(1..=3);
        shuffle(rng, &mut colors);
        colors.truncate(keep);
    }
    (shapes, colors)
}

/// Fisher-Yates shuffle driven by `random_range` (keeps every draw explicit and reproducible).
pub(crate) fn shuffle<T, R: Rng + ?Sized>(rng: &mut R, v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = rng.random_range(0..=i);
        v.swap(i, j);
    }
}

fn sample_side<R: Rng + ?Sized>(rng: &mut R, lo: f32, hi: f32, snap: bool) -> f32 {
    if snap {
        let lo = lo.ceil() as u32;
        let hi = (hi.floor() as u32).max(lo);
        rng.random_range(lo..=hi) as f32
    } else {
        rng.random_range(lo..=hi)
    }
}

fn too_close(a: &Object, b: &Object, gap: f32) -> bool {
    let [ax0, ay0, ax1, ay1] = a.bbox();
    let [bx0, by0, bx1, by1] = b.bbox();
    // Intersection of the bounding boxes grown by the gap.
    let x0 = ax0.max(bx0) - gap;
    let y0 = ay0.max(by0) - gap;
    let x1 = ax1.min(bx1) + gap;
    let y1 = ay1.min(by1) + gap;
    if x0 > x1 || y0 > y1 {
        return false;
    }
    // If points a (in A) and b (in B) were closer than `gap`, their midpoint m would be within
    // gap/2 of both shapes, so sdf_a(m) < gap/2 and sdf_b(m) < gap/2 (the bounds never exceed
    // the true distance), and m lies in the intersection of the boxes grown by gap/2. The grid
    // (step 0.5) has a point within 0.36 of m where, both bounds being 1-Lipschitz, both are
    // below gap/2 + 0.36: testing that threshold on the grid cannot miss a close pair.
    let thr = gap / 2.0 + 0.36;
    let step = 0.5;
    let nx = ((x1 - x0) / step).ceil() as usize + 1;
    let ny = ((y1 - y0) / step).ceil() as usize + 1;
    for j in 0..ny {
        let y = y0 + j as f32 * step;
        for i in 0..nx {
            let x = x0 + i as f32 * step;
            if a.sdf(x, y) < thr && b.sdf(x, y) < thr {
                return true;
            }
        }
    }
    false
}

fn sample_objects<R: Rng + ?Sized>(rng: &mut R, width: u32, height: u32, n: usize) -> Vec<Object> {
    let (lo, hi) = size_bounds(width, height);
    let (shapes, colors) = sample_palettes(rng);
    // Integer-aligned boxes (as many drawing libraries produce) half of the time.
    let snap = rng.random_bool(0.5);
    let aa_mode = rng.random_range(0..20);
    let (w, h) = (width as f32, height as f32);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        // After many failed layouts, favour smaller objects (always terminates in practice).
        let hi_now = if attempt > 20 {
            lo + (hi - lo) * 0.5
        } else {
            hi
        };
        let mut objects: Vec<Object> = Vec::with_capacity(n);
        'objects: for _ in 0..n {
            let shape = shapes[rng.random_range(0..shapes.len())];
            let color = colors[rng.random_range(0..colors.len())];
            let rgb = sample_rgb(rng, color);
            let antialias = match aa_mode {
                0..=8 => true,
                9..=17 => false,
                _ => rng.random_bool(0.5),
            };
            let (bw, bh, orientation) = match shape {
                Shape::Circle | Shape::Square => {
                    let d = sample_side(rng, lo, hi_now, snap);
                    (d, d, Orientation::Up)
                }
                Shape::Triangle => {
                    let base = sample_side(rng, lo, hi_now, snap);
                    let height = if rng.random_bool(0.3) {
                        // Near-equilateral.
                        let t = (base * 3f32.sqrt() / 2.0).clamp(lo, hi_now);
                        if snap {
                            t.round().clamp(lo.ceil(), hi_now.floor().max(lo.ceil()))
                        } else {
                            t
                        }
                    } else {
                        sample_side(rng, lo, hi_now, snap)
                    };
                    let o = if rng.random_bool(0.5) {
                        Orientation::Up
                    } else {
                        Orientation::Down
                    };
                    (base, height, o)
                }
            };
            for _ in 0..60 {
                let (cx, cy) = if snap {
                    let max_x0 = (w - BORDER_MARGIN - bw).floor() as i64;
                    let max_y0 = (h - BORDER_MARGIN - bh).floor() as i64;
                    let min0 = BORDER_MARGIN.ceil() as i64;
                    if max_x0 < min0 || max_y0 < min0 {
                        break;
                    }
                    let x0 = rng.random_range(min0..=max_x0) as f32;
                    let y0 = rng.random_range(min0..=max_y0) as f32;
                    (x0 + bw / 2.0, y0 + bh / 2.0)
                } else {
                    let (ax, bx) = (BORDER_MARGIN + bw / 2.0, w - BORDER_MARGIN - bw / 2.0);
                    let (ay, by) = (BORDER_MARGIN + bh / 2.0, h - BORDER_MARGIN - bh / 2.0);
                    if ax > bx || ay > by {
                        break;
                    }
                    (rng.random_range(ax..=bx), rng.random_range(ay..=by))
                };
                let candidate = Object {
                    shape,
                    color,
                    rgb,
                    center: [cx, cy],
                    size: [bw, bh],
                    orientation,
                    antialias,
                };
                if objects.iter().all(|o| !too_close(o, &candidate, MIN_GAP)) {
                    objects.push(candidate);
                    continue 'objects;
                }
            }
            break;
        }
        if objects.len() == n {
            return objects;
        }
    }
}

/// Draws one fresh training example in memory: a scene, its rendered image (passed through the
/// JPEG codec when the scene's format is JPEG, so the model sees compression artefacts) and the
/// questions of [`questions_for`] as `(question, answer, kind)`.
///
/// Deterministic given the generator's state; use [`rng_from_seed`] for a reproducible stream.
pub fn sample_example<R: Rng + ?Sized>(
    rng: &mut R,
) -> (image::RgbImage, Vec<(String, String, String)>) {
    let (_, img, qs) = sample_example_with_scene(rng);
    (img, qs)
}

/// Like [`sample_example`], also returning the scene.
pub fn sample_example_with_scene<R: Rng + ?Sized>(
    rng: &mut R,
) -> (Scene, image::RgbImage, Vec<(String, String, String)>) {
    let scene = Scene::sample(rng);
    let img = render(&scene, rng);
    let img = apply_format(img, scene.format);
    let qs = questions_for(&scene, rng);
    (scene, img, qs)
}

/// The training-only question that asks for every object: see [`describe_answer`].
pub const DESCRIBE_QUESTION: &str = "Describe the image.";

/// Kind name of [`DESCRIBE_QUESTION`]'s turns (training only).
pub const DESCRIBE_KIND: &str = "describe";

/// The kinds of turn training asks besides the spec's [`Kind`]s.
pub const TRAINING_ONLY_KINDS: [&str; 3] = [DESCRIBE_KIND, COUNT_PAIR_KIND, POSITION_KIND];

/// The answer to [`DESCRIBE_QUESTION`]: the number of objects, then each object's colour and
/// shape from left to right (by centre), e.g. `2 objects: red circle, blue square`. One turn
/// supervises every object's colour and shape at once, which teaches the model to see shapes
/// far faster than one-word answers do; it is also a useful thing to ask the shipped model.
pub fn describe_answer(scene: &Scene) -> String {
    let mut objs: Vec<&Object> = scene.objects.iter().collect();
    objs.sort_by(|a, b| a.center[0].total_cmp(&b.center[0]));
    let n = objs.len();
    let list: Vec<String> = objs
        .iter()
        .map(|o| format!("{} {}", o.color.name(), o.shape.name()))
        .collect();
    format!(
        "{n} {}: {}",
        if n == 1 { "object" } else { "objects" },
        list.join(", ")
    )
}

/// Like [`sample_example`], with `n_questions` questions picked by `balancer` (balanced across
/// kinds and answers over the whole training stream; keep one balancer for the run) instead of
/// all of [`questions_for`]'s. Fewer come back only if the scene allows fewer.
pub fn sample_balanced_example<R: Rng + ?Sized>(
    rng: &mut R,
    balancer: &mut QuestionBalancer,
    n_questions: usize,
) -> (image::RgbImage, Vec<(String, String, String)>) {
    let (_, img, qs) = sample_balanced_example_with_scene(rng, balancer, n_questions);
    (img, qs)
}

/// Like [`sample_balanced_example`], also returning the scene.
pub fn sample_balanced_example_with_scene<R: Rng + ?Sized>(
    rng: &mut R,
    balancer: &mut QuestionBalancer,
    n_questions: usize,
) -> (Scene, image::RgbImage, Vec<(String, String, String)>) {
    let scene = Scene::sample(rng);
    let img = render(&scene, rng);
    let img = apply_format(img, scene.format);
    let qs = balancer
        .pick(&scene, n_questions, rng)
        .into_iter()
        .map(Candidate::into_tuple)
        .collect();
    (scene, img, qs)
}
