// DataSequence's host step after the batch's cache rows are known and the
// random numbers drawn (layers/data_sequence.py, _forward_native): store
// the batch in the per-label rings, choose the positive (or other) and
// the negatives from the keys, and write the image tops and the labels top.
// The same choices as the NumPy path (_add, _pick_positive,
// _pick_negative, _draw) bit for bit: ties in an argmax go to the first
// index, as np.argmax's; a slot from a uniform u is int64(u * count) capped
// at count - 1.  Built into the same library as window_ops.cpp.
#include <cstdint>
#include <cstring>
#include <vector>

#include "parallel_for.h"

namespace {

// the first index of the largest of keys[j] over j with ok(j) (-1.0 where
// not ok: every key is in [0, 1)), and whether any j was ok
template <typename Ok>
inline i64 first_max(const double* keys, i64 n, const Ok& ok, bool* any) {
  i64 best = 0;
  double top = -2.0;
  *any = false;
  for (i64 j = 0; j < n; ++j) {
    const double v = ok(j) ? (*any = true, keys[j]) : -1.0;
    if (v > top) {
      top = v;
      best = j;
    }
  }
  return best;
}

inline i64 wrap(i64 a, i64 m) { return ((a % m) + m) % m; }

}  // namespace

// n items of d floats (items, their hashes and cache rows); the caches:
// cache (R, cs, d), cache_hash (R, cs), count and cursor (R), all updated.
// Keys: pos_keys (n, cs), then per negative t < max(k, 1) neg_keys[t] (n,
// R) and neg_u[t] (n).  k = 0: pairs, the other a positive when
// balance and (step * n + i) is even.  Tops: image tops top[0 .. 2 + k)
// (n, d) each, labels_top (n, 2 + k) or null, written from labels (n) and
// row_labels (R).  Returns 0, or 1 + i when item i has no positive
// different from itself, or -(1 + i) when it has no negative (the first
// such item); then the caches are updated but no top is written.
extern "C" i64 lg_data_sequence_f32(
    i64 n, i64 d, const float* items, const uint64_t* hashes, const i64* rows, i64 R, i64 cs,
    float* cache, uint64_t* cache_hash, i64* count, i64* cursor, int k, int balance, i64 step,
    const double* pos_keys, const double* const* neg_keys, const double* const* neg_u,
    float* const* tops, float* labels_top, const i64* labels, const i64* row_labels) {
  // the batch into the rings, in batch order; only the last cs items of a
  // label in this batch survive
  std::vector<i64> added(R, 0), nth(n);
  for (i64 i = 0; i < n; ++i) nth[i] = added[rows[i]]++;
  std::vector<i64> store_item, store_at;
  for (i64 i = 0; i < n; ++i) {
    const i64 r = rows[i];
    if (nth[i] < added[r] - cs) continue;
    const i64 slot = (cursor[r] + nth[i]) % cs;
    cache_hash[r * cs + slot] = hashes[i];
    store_item.push_back(i);
    store_at.push_back(r * cs + slot);
  }
  for (i64 r = 0; r < R; ++r) {
    cursor[r] = (cursor[r] + added[r]) % cs;
    count[r] = count[r] + added[r] < cs ? count[r] + added[r] : cs;
  }
  // the picks: (cache row, slot) of the positive and of each negative
  const int negatives = k > 0 ? k : 1;
  std::vector<i64> pick_row((size_t)(1 + negatives) * n), pick_slot(pick_row.size());
  i64 no_positive = -1, no_negative = -1;
  for (i64 i = 0; i < n; ++i) {
    const i64 r = rows[i];
    bool pos_ok;
    i64 slot = first_max(pos_keys + i * cs, cs, [&](i64 j) {
      return j < count[r] && cache_hash[r * cs + j] != hashes[i];
    }, &pos_ok);
    if (!pos_ok && count[r] == 1) {   // a label's first, single image: itself
      slot = wrap(cursor[r] - 1, cs);
      pos_ok = true;
    }
    pick_row[i] = r;
    pick_slot[i] = slot;
    bool neg_all = true;
    for (int t = 0; t < negatives; ++t) {
      bool neg_ok;
      const i64 nr = first_max(neg_keys[t] + i * R, R, [&](i64 j) {
        return count[j] > 0 && j != r;
      }, &neg_ok);
      i64 ns = (i64)(neg_u[t][i] * (double)count[nr]);
      const i64 last = count[nr] - 1 > 0 ? count[nr] - 1 : 0;
      if (ns > last) ns = last;
      pick_row[(1 + t) * n + i] = nr;
      pick_slot[(1 + t) * n + i] = ns;
      neg_all = neg_all && neg_ok;
    }
    if (k == 0) {   // pairs: the positive or the negative
      const bool want_pos = balance && (step * n + i) % 2 == 0;
      if (want_pos ? !pos_ok : !neg_all) {
        if (want_pos && no_positive < 0) no_positive = i;
        if (!want_pos && no_negative < 0) no_negative = i;
      }
      if (!want_pos) {
        pick_row[i] = pick_row[n + i];
        pick_slot[i] = pick_slot[n + i];
      }
    } else {
      if (!pos_ok && no_positive < 0) no_positive = i;
      if (!neg_all && no_negative < 0) no_negative = i;
    }
  }
  // the batch into the caches (also before an error: the NumPy path has
  // stored it then too), then the tops (a pick may be an image stored just now)
  const size_t bytes = sizeof(float) * (size_t)d;
  const i64 stored = (i64)store_item.size();
  parallel_for(stored, [&](i64 b, i64 e) {
    for (i64 j = b; j < e; ++j)
      std::memcpy(cache + store_at[j] * d, items + store_item[j] * d, bytes);
  }, 16);
  if (no_positive >= 0) return 1 + no_positive;
  if (no_negative >= 0) return -(1 + no_negative);
  const int image_tops = 2 + k;   // anchor, positive (or other), negatives
  parallel_for(image_tops * n, [&](i64 b, i64 e) {
    for (i64 j = b; j < e; ++j) {
      const i64 t = j / n, i = j % n;
      const float* src = t == 0 ? items + i * d
                                : cache + (pick_row[(t - 1) * n + i] * cs
                                           + pick_slot[(t - 1) * n + i]) * d;
      std::memcpy(tops[t] + i * d, src, bytes);
    }
  }, 16);
  if (labels_top)
    for (i64 i = 0; i < n; ++i) {
      labels_top[i * image_tops] = (float)labels[i];
      for (int t = 1; t < image_tops; ++t)
        labels_top[i * image_tops + t] = (float)row_labels[pick_row[(t - 1) * n + i]];
    }
  return 0;
}
