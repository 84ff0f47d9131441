//! The flattened batch: sequences run together give the logits they give alone.

mod common;

use candle_core::Tensor;
use lantern::engine::models::SeqInput;
use lantern::engine::template::ChatMessage;

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn a_batch_of_three_prompts_equals_each_alone() {
    let model = common::smollm2();
    let t = &model.transformer;
    let prompts: Vec<Vec<u32>> = [
        "What is the capital of France?",
        "Write a haiku about the sea, please, with a title.",
        "2+2=",
    ]
    .iter()
    .map(|p| model.chat_prompt(&[ChatMessage::new("user", *p)]).unwrap())
    .collect();

    // Alone: prefill, then two decode steps, each sequence by itself.
    let mut alone = Vec::new();
    let mut next_tokens = Vec::new();
    for p in &prompts {
        let mut cache = t.new_cache();
        let mut rows = vec![t
            .forward(&mut [SeqInput {
                tokens: p,
                cache: &mut cache,
                all_logits: false,
            }])
            .unwrap()];
        let mut nexts = Vec::new();
        for _ in 0..2 {
            let next = rows
                .last()
                .unwrap()
                .argmax(1)
                .unwrap()
                .to_vec1::<u32>()
                .unwrap()[0];
            nexts.push(next);
            rows.push(
                t.forward(&mut [SeqInput {
                    tokens: &[next],
                    cache: &mut cache,
                    all_logits: false,
                }])
                .unwrap(),
            );
        }
        alone.push(rows);
        next_tokens.push(nexts);
    }

    // Together: one prefill of all three, then decode steps that mix them; sequence 2 joins the
    // second step late with its prefill while the others decode (as continuous batching does).
    let mut caches: Vec<_> = (0..3).map(|_| t.new_cache()).collect();
    let [c0, c1, c2] = &mut caches[..] else {
        unreachable!()
    };
    let first = t
        .forward(&mut [
            SeqInput {
                tokens: &prompts[0],
                cache: c0,
                all_logits: false,
            },
            SeqInput {
                tokens: &prompts[1],
                cache: c1,
                all_logits: false,
            },
        ])
        .unwrap();
    for (i, rows) in alone.iter().enumerate().take(2) {
        let d = max_diff(&first.narrow(0, i, 1).unwrap(), &rows[0]);
        assert!(d < 1e-3, "prefill of sequence {i}: max |Δ logit| {d}");
    }
    let mixed = t
        .forward(&mut [
            SeqInput {
                tokens: &[next_tokens[0][0]],
                cache: c0,
                all_logits: false,
            },
            SeqInput {
                tokens: &prompts[2],
                cache: c2,
                all_logits: false,
            },
            SeqInput {
                tokens: &[next_tokens[1][0]],
                cache: c1,
                all_logits: false,
            },
        ])
        .unwrap();
    let pairs = [(0, 0, 1), (1, 2, 0), (2, 1, 1)];
    for (row, seq, step) in pairs {
        let d = max_diff(&mixed.narrow(0, row, 1).unwrap(), &alone[seq][step]);
        assert!(d < 1e-3, "mixed step, sequence {seq}: max |Δ logit| {d}");
    }
    let decode = t
        .forward(&mut [
            SeqInput {
                tokens: &[next_tokens[2][0]],
                cache: c2,
                all_logits: false,
            },
            SeqInput {
                tokens: &[next_tokens[0][1]],
                cache: c0,
                all_logits: false,
            },
            SeqInput {
                tokens: &[next_tokens[1][1]],
                cache: c1,
                all_logits: false,
            },
        ])
        .unwrap();
    for (row, seq, step) in [(0, 2, 1), (1, 0, 2), (2, 1, 2)] {
        let d = max_diff(&decode.narrow(0, row, 1).unwrap(), &alone[seq][step]);
        assert!(d < 1e-3, "decode, sequence {seq}: max |Δ logit| {d}");
    }
}

#[test]
fn bad_input_is_an_error_not_a_panic() {
    let t = &common::smollm2().transformer;
    let mut cache = t.new_cache();
    let err = t
        .forward(&mut [SeqInput {
            tokens: &[10_000_000],
            cache: &mut cache,
            all_logits: false,
        }])
        .unwrap_err();
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    let err = t
        .forward(&mut [SeqInput {
            tokens: &[],
            cache: &mut cache,
            all_logits: false,
        }])
        .unwrap_err();
    assert!(err.to_string().contains("no tokens"), "{err}");
    let long = vec![1u32; t.info.context_length + 1];
    let err = t
        .forward(&mut [SeqInput {
            tokens: &long,
            cache: &mut cache,
            all_logits: false,
        }])
        .unwrap_err();
    assert!(err.to_string().contains("context length exceeded"), "{err}");
    assert!(
        cache.is_empty(),
        "a refused pass leaves the cache as it was"
    );
}

/// Prefix reuse: a copy of a cache's first positions, with the rest of the prompt fed on top,
/// gives exactly the logits of computing the prompt in the same chunks, whatever the source
/// sequence appended afterwards. (Across different chunkings logits differ by float summation
/// order, which 8-bit activation rounding can amplify; llama.cpp's prompt cache has the same
/// property.)
#[test]
fn a_copied_prefix_gives_the_logits_of_computing_it() {
    let model = common::smollm2();
    let t = &model.transformer;
    let forward = |tokens: &[u32], cache: &mut lantern::engine::kv::KvCache| {
        t.forward(&mut [SeqInput {
            tokens,
            cache,
            all_logits: false,
        }])
        .unwrap()
    };
    for text in [
        "Write a short story about the sea.",
        "Summarize: bread is good.",
    ] {
        let prompt = model
            .chat_prompt(&[ChatMessage::new("user", text)])
            .unwrap();
        let n = prompt.len();
        for keep in [5, n / 2, n - 1] {
            let mut fresh = t.new_cache();
            forward(&prompt[..keep], &mut fresh);
            let computed = forward(&prompt[keep..], &mut fresh);

            // A finished sequence: the same first chunk, then other tokens of its own.
            let mut source = t.new_cache();
            let first = forward(&prompt[..keep], &mut source);
            let mut next = first.argmax(1).unwrap().to_vec1::<u32>().unwrap()[0];
            for _ in 0..11 {
                next = forward(&[next], &mut source)
                    .argmax(1)
                    .unwrap()
                    .to_vec1::<u32>()
                    .unwrap()[0];
            }
            let mut copy = source.copy_prefix(keep, n + 12).unwrap();
            let reused = forward(&prompt[keep..], &mut copy);
            let d = max_diff(&reused, &computed);
            assert_eq!(d, 0.0, "{text:?}, {keep} of {n} reused: max |Δ logit| {d}");
        }
    }
}
