"""tf.data input pipelines over precomputed features: fixed-shape padded batches placed on a Mesh.

The batch contract (numpy, then jax arrays; B = batch, Lv = max_v_l, Lt = max_q_l, W = max_windows):
  src_vid              [B, Lv, Dv+2] f32  L2-normalised video features + TEF [i/L, (i+1)/L], zero padded
  src_vid_mask         [B, Lv]       f32  1 = valid clip
  src_txt              [B, Lt, Dt]   f32  L2-normalised text token features, zero padded
  src_txt_mask         [B, Lt]       f32  1 = valid token
  span_labels_cxw      [B, W, 2]     f32  GT windows, normalised (cx, w) by the sample's own L*2 s
  num_windows          [B]           i32  valid rows of span_labels_cxw
  mask_labels          [B, W, Lv]    f32  per GT window, 1 on clips st//2 .. ed//2-1
  saliency_pos_labels  [B, 2]        i32  (hard pos, easy pos) clip indices
  saliency_neg_labels  [B, 2]        i32  (hard neg, easy neg) clip indices
  saliency_all_labels  [B, Lv]       f32  per clip sum of 3 annotators' scores (0..12)
  src_pos_mask         [B, Lv]       f32  1 on relevant clips
  src_neg_mask         [B, Lv]       f32  1 on wrong-span clips (stage 2 Boost), else 0
  has_saliency         [B]           f32  1 when the sample has saliency labels
  qid                  [B]           i64
  duration             [B]           f32  annotation duration in seconds (inference scaling)
  sample_valid         [B]           f32  0 for padding rows of a final eval batch
Key names follow the reference fixture (tests/fixtures/amr_reference/README.md §3).
"""
