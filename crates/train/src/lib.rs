//! pixlm-train: the shapes task, tokenizer training, the training loop and evaluation.

pub mod data;
pub mod eval;
mod grad_check;
pub mod model_spec;
pub mod shapes;
pub mod tokenizer_train;
pub mod trainer;
