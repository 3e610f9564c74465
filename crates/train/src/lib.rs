//! pixlm-train: the shapes task, tokenizer training, the training loop and evaluation.

pub mod shapes;
pub mod tokenizer_train;
