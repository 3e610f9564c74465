//! Questions: the spec's templates, every valid question of a scene, and balanced selections.

use super::{shuffle, ColorName, Kind, Scene, Shape};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One line of an evaluation set's `questions.jsonl` (keys in the spec's order).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Question {
    /// Image path, relative to the set's directory.
    pub image: String,
    pub question: String,
    /// One lowercase word.
    pub answer: String,
    /// `color`, `shape`, `count_shape`, `count_all`, `exists` or `left_of`.
    pub kind: String,
}

/// A question valid for a given scene, with its answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub kind: Kind,
    pub question: String,
    pub answer: String,
    /// `exists` answered `no` although some object has the colour asked (another shape).
    pub near_miss_color: bool,
    /// `exists` answered `no` although some object has the shape asked (another colour).
    pub near_miss_shape: bool,
}

impl Candidate {
    fn new(kind: Kind, question: String, answer: impl Into<String>) -> Candidate {
        Candidate {
            kind,
            question,
            answer: answer.into(),
            near_miss_color: false,
            near_miss_shape: false,
        }
    }

    /// `(question, answer, kind name)`.
    pub fn into_tuple(self) -> (String, String, String) {
        (self.question, self.answer, self.kind.name().to_string())
    }

    /// The evaluation-set line for `image`.
    pub fn to_question(&self, image: &str) -> Question {
        Question {
            image: image.to_string(),
            question: self.question.clone(),
            answer: self.answer.clone(),
            kind: self.kind.name().to_string(),
        }
    }

    /// Whether this is an `exists`/`no` near miss (right colour or right shape).
    pub fn is_near_miss(&self) -> bool {
        self.near_miss_color || self.near_miss_shape
    }
}

/// `What color is the {shape}?`
pub fn color_question(shape: Shape) -> String {
    format!("What color is the {}?", shape.name())
}

/// `What shape is the {color} object?`
pub fn shape_question(color: ColorName) -> String {
    format!("What shape is the {} object?", color.name())
}

/// `How many {shape}s are there?`
pub fn count_shape_question(shape: Shape) -> String {
    format!("How many {} are there?", shape.plural())
}

/// `How many {color} {shape}s are there?`: a training-only question (not one of the spec's
/// kinds) whose answer counts objects of one colour *and* shape. It grades what `exists`
/// only answers yes or no, so the model learns to bind colour to shape from a count it
/// already knows how to make (`count_shape`).
pub fn count_pair_question(color: ColorName, shape: Shape) -> String {
    format!("How many {} {} are there?", color.name(), shape.plural())
}

/// Kind name of [`count_pair_question`] (training only).
pub const COUNT_PAIR_KIND: &str = "count_pair";

/// A [`count_pair_question`] for `scene` as `(question, answer, kind)`: half the time about
/// a colour and shape some object has, otherwise a near miss (an existing colour with
/// another shape, or an existing shape with another colour; answer `0`).
pub fn count_pair_for<R: Rng + ?Sized>(scene: &Scene, rng: &mut R) -> (String, String, String) {
    let pick = |rng: &mut R| &scene.objects[rng.random_range(0..scene.objects.len())];
    let (color, shape) = if scene.objects.is_empty() {
        (ColorName::ALL[0], Shape::ALL[0])
    } else if rng.random_bool(0.5) {
        let o = pick(rng);
        (o.color, o.shape)
    } else {
        let o = pick(rng);
        if rng.random_bool(0.5) {
            (o.color, Shape::ALL[rng.random_range(0..Shape::ALL.len())])
        } else {
            (
                ColorName::ALL[rng.random_range(0..ColorName::ALL.len())],
                o.shape,
            )
        }
    };
    (
        count_pair_question(color, shape),
        scene.count(color, shape).to_string(),
        COUNT_PAIR_KIND.to_string(),
    )
}

/// `Where is the {color} {shape}?`: a training-only question answered with the fifth of the
/// image's width that holds the object's centre, `0` (left) to `4` (right). It hands the
/// model each object's horizontal position, retrieved by colour and shape, which is what
/// `left_of` compares.
pub fn position_question(color: ColorName, shape: Shape) -> String {
    format!("Where is the {} {}?", color.name(), shape.name())
}

/// Kind name of [`position_question`] (training only).
pub const POSITION_KIND: &str = "position";

/// A [`position_question`] about a random object of `scene` that is the only one of its
/// colour and shape, as `(question, answer, kind)`; `None` when there is no such object.
pub fn position_for<R: Rng + ?Sized>(
    scene: &Scene,
    rng: &mut R,
) -> Option<(String, String, String)> {
    let unique: Vec<&super::Object> = scene
        .objects
        .iter()
        .filter(|o| scene.count(o.color, o.shape) == 1)
        .collect();
    if unique.is_empty() {
        return None;
    }
    let o = unique[rng.random_range(0..unique.len())];
    Some((
        position_question(o.color, o.shape),
        position_fifth(o, scene).to_string(),
        POSITION_KIND.to_string(),
    ))
}

/// The fifth of `scene`'s width that holds `o`'s centre: `0` (left) to `4` (right), the
/// answer of [`position_question`].
pub fn position_fifth(o: &super::Object, scene: &Scene) -> u32 {
    let fifth = ((o.center[0] / scene.width.max(1) as f32) * 5.0).floor();
    fifth.clamp(0.0, 4.0) as u32
}

/// `How many objects are there?`
pub const COUNT_ALL_QUESTION: &str = "How many objects are there?";

/// `Is there a {color} {shape}?`
pub fn exists_question(color: ColorName, shape: Shape) -> String {
    format!("Is there a {} {}?", color.name(), shape.name())
}

/// `Is the {color1} {shape1} left of the {color2} {shape2}?`
pub fn left_of_question(a: (ColorName, Shape), b: (ColorName, Shape)) -> String {
    format!(
        "Is the {} {} left of the {} {}?",
        a.0.name(),
        a.1.name(),
        b.0.name(),
        b.1.name()
    )
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Every question text the templates can produce (for tokenizer corpora), in a fixed order.
pub fn all_question_texts() -> Vec<String> {
    let mut out = Vec::new();
    out.extend(Shape::ALL.map(color_question));
    out.extend(ColorName::ALL.map(shape_question));
    out.extend(Shape::ALL.map(count_shape_question));
    out.push(COUNT_ALL_QUESTION.to_string());
    let combos: Vec<(ColorName, Shape)> = ColorName::ALL
        .into_iter()
        .flat_map(|c| Shape::ALL.map(move |s| (c, s)))
        .collect();
    out.extend(combos.iter().map(|&(c, s)| exists_question(c, s)));
    for &a in &combos {
        for &b in &combos {
            if a != b {
                out.push(left_of_question(a, b));
            }
        }
    }
    out
}

/// Every answer word of the task: colours, shapes, `0`..`4`, `yes`, `no`.
pub fn all_answers() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = ColorName::ALL.iter().map(|c| c.name()).collect();
    out.extend(Shape::ALL.iter().map(|s| s.name()));
    out.extend(["0", "1", "2", "3", "4", "yes", "no"]);
    out
}

/// Pairs `(i, j)`, `i < j`, of objects that a `left_of` question may relate: each the only
/// object of its colour and shape, centres at least `width / 10` apart horizontally.
pub fn left_of_pairs(scene: &Scene) -> Vec<(usize, usize)> {
    let unique = |i: usize| {
        let o = &scene.objects[i];
        scene.count(o.color, o.shape) == 1
    };
    let min_dx = scene.width as f32 / 10.0;
    let n = scene.objects.len();
    let mut out = Vec::new();
    for i in 0..n {
        for j in i + 1..n {
            let dx = (scene.objects[i].center[0] - scene.objects[j].center[0]).abs();
            if unique(i) && unique(j) && dx >= min_dx {
                out.push((i, j));
            }
        }
    }
    out
}

fn left_of_candidate(scene: &Scene, i: usize, j: usize) -> Candidate {
    let (a, b) = (&scene.objects[i], &scene.objects[j]);
    Candidate::new(
        Kind::LeftOf,
        left_of_question((a.color, a.shape), (b.color, b.shape)),
        yes_no(a.center[0] < b.center[0]),
    )
}

/// Every question the spec allows for `scene`, with its answer, in a fixed order: `color` for
/// each shape held by exactly one object, `shape` for each colour held by exactly one object,
/// `count_shape` for the three shapes (zeros included), `count_all`, `exists` for all 24
/// colour/shape pairs, `left_of` for both orders of every pair of [`left_of_pairs`].
pub fn all_questions(scene: &Scene) -> Vec<Candidate> {
    let mut out = Vec::new();
    for shape in Shape::ALL {
        if scene.count_shape(shape) == 1 {
            if let Some(o) = scene.objects.iter().find(|o| o.shape == shape) {
                out.push(Candidate::new(
                    Kind::Color,
                    color_question(shape),
                    o.color.name(),
                ));
            }
        }
    }
    for color in ColorName::ALL {
        if scene.count_color(color) == 1 {
            if let Some(o) = scene.objects.iter().find(|o| o.color == color) {
                out.push(Candidate::new(
                    Kind::Shape,
                    shape_question(color),
                    o.shape.name(),
                ));
            }
        }
    }
    for shape in Shape::ALL {
        out.push(Candidate::new(
            Kind::CountShape,
            count_shape_question(shape),
            scene.count_shape(shape).to_string(),
        ));
    }
    out.push(Candidate::new(
        Kind::CountAll,
        COUNT_ALL_QUESTION.to_string(),
        scene.objects.len().to_string(),
    ));
    for color in ColorName::ALL {
        for shape in Shape::ALL {
            let present = scene.count(color, shape) > 0;
            let mut c =
                Candidate::new(Kind::Exists, exists_question(color, shape), yes_no(present));
            if !present {
                c.near_miss_color = scene.count_color(color) > 0;
                c.near_miss_shape = scene.count_shape(shape) > 0;
            }
            out.push(c);
        }
    }
    for (i, j) in left_of_pairs(scene) {
        out.push(left_of_candidate(scene, i, j));
        out.push(left_of_candidate(scene, j, i));
    }
    out
}

/// Index (into `pool`) of an `exists`/`no` question: 40% a right-colour-wrong-shape near miss,
/// 40% right-shape-wrong-colour, 20% any; falling back to what exists.
fn pick_exists_no<R: Rng + ?Sized>(rng: &mut R, pool: &[&Candidate]) -> Option<usize> {
    if pool.is_empty() {
        return None;
    }
    let by = |f: fn(&Candidate) -> bool| -> Vec<usize> {
        (0..pool.len()).filter(|&i| f(pool[i])).collect()
    };
    let color = by(|c| c.near_miss_color);
    let shape = by(|c| c.near_miss_shape);
    let r = rng.random_range(0..10);
    if r < 8 {
        let order = if r < 4 {
            [&color, &shape]
        } else {
            [&shape, &color]
        };
        for list in order {
            if !list.is_empty() {
                return Some(list[rng.random_range(0..list.len())]);
            }
        }
    }
    Some(rng.random_range(0..pool.len()))
}

/// A training set of questions for `scene`, as `(question, answer, kind)`, shuffled:
/// every `color`, `shape` and `count_shape` question allowed (zeros included), `count_all`,
/// `exists` balanced (each colour/shape pair present, and as many absent ones, mostly near
/// misses: right colour wrong shape or right shape wrong colour), and one `left_of` per
/// allowed pair in a random order (so `yes` and `no` are equally likely).
pub fn questions_for<R: Rng + ?Sized>(scene: &Scene, rng: &mut R) -> Vec<(String, String, String)> {
    let all = all_questions(scene);
    let mut out: Vec<Candidate> = all
        .iter()
        .filter(|c| {
            matches!(
                c.kind,
                Kind::Color | Kind::Shape | Kind::CountShape | Kind::CountAll
            )
        })
        .cloned()
        .collect();
    let yes: Vec<&Candidate> = all
        .iter()
        .filter(|c| c.kind == Kind::Exists && c.answer == "yes")
        .collect();
    let mut no: Vec<&Candidate> = all
        .iter()
        .filter(|c| c.kind == Kind::Exists && c.answer == "no")
        .collect();
    out.extend(yes.iter().map(|&c| c.clone()));
    for _ in 0..yes.len() {
        match pick_exists_no(rng, &no) {
            Some(i) => out.push(no.swap_remove(i).clone()),
            None => break,
        }
    }
    for (i, j) in left_of_pairs(scene) {
        let (a, b) = if rng.random_bool(0.5) { (i, j) } else { (j, i) };
        out.push(left_of_candidate(scene, a, b));
    }
    shuffle(rng, &mut out);
    out.into_iter().map(Candidate::into_tuple).collect()
}

/// Picks questions balanced across kinds and, within a kind, across answers, over many scenes.
///
/// For each question slot it takes, among the kinds the scene allows (and not yet used up for
/// this scene), one asked least so far (ties broken at random); then, among that kind's
/// remaining answers for this scene, one given least so far; then a question with that answer
/// (for `exists`/`no`, mostly near misses). Kinds that few scenes allow (`left_of`, `color`,
/// `shape`) are therefore asked whenever possible, and `yes`/`no` stay balanced.
#[derive(Clone, Debug, Default)]
pub struct QuestionBalancer {
    kind_counts: [usize; 6],
    answer_counts: BTreeMap<(Kind, String), usize>,
}

impl QuestionBalancer {
    pub fn new() -> QuestionBalancer {
        QuestionBalancer::default()
    }

    /// Questions asked so far of `kind`.
    pub fn kind_count(&self, kind: Kind) -> usize {
        self.kind_counts[kind.index()]
    }

    /// Questions asked so far of `kind` answered `answer`.
    pub fn answer_count(&self, kind: Kind, answer: &str) -> usize {
        self.answer_counts
            .get(&(kind, answer.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Up to `n` distinct questions for `scene` (fewer only if the scene allows fewer).
    pub fn pick<R: Rng + ?Sized>(
        &mut self,
        scene: &Scene,
        n: usize,
        rng: &mut R,
    ) -> Vec<Candidate> {
        let mut pool = all_questions(scene);
        let mut out = Vec::with_capacity(n);
        while out.len() < n && !pool.is_empty() {
            let kinds: Vec<Kind> = Kind::ALL
                .into_iter()
                .filter(|&k| pool.iter().any(|c| c.kind == k))
                .collect();
            let Some(kind) = least_used(rng, &kinds, |k| self.kind_count(*k)) else {
                break;
            };
            let mut answers: Vec<&str> = pool
                .iter()
                .filter(|c| c.kind == kind)
                .map(|c| c.answer.as_str())
                .collect();
            answers.sort_unstable();
            answers.dedup();
            let Some(answer) = least_used(rng, &answers, |a| self.answer_count(kind, a)) else {
                break;
            };
            let answer = answer.to_string();
            let idx: Vec<usize> = (0..pool.len())
                .filter(|&i| pool[i].kind == kind && pool[i].answer == answer)
                .collect();
            let refs: Vec<&Candidate> = idx.iter().map(|&i| &pool[i]).collect();
            let choice = if kind == Kind::Exists && answer == "no" {
                pick_exists_no(rng, &refs)
            } else if refs.is_empty() {
                None
            } else {
                Some(rng.random_range(0..refs.len()))
            };
            let Some(choice) = choice else { break };
            let c = pool.remove(idx[choice]);
            self.kind_counts[kind.index()] += 1;
            *self.answer_counts.entry((kind, answer)).or_insert(0) += 1;
            out.push(c);
        }
        out
    }
}

/// One of `items` with the smallest `count`, chosen uniformly among ties.
fn least_used<T: Copy, R: Rng + ?Sized>(
    rng: &mut R,
    items: &[T],
    count: impl Fn(&T) -> usize,
) -> Option<T> {
    let min = items.iter().map(&count).min()?;
    let ties: Vec<T> = items.iter().copied().filter(|t| count(t) == min).collect();
    Some(ties[rng.random_range(0..ties.len())])
}
