// The T-LoRA rank schedule (SPEC §2), as the nodes compute it:
//     r(t) = int( ((T - t) / T) ** p * (R - r_min) ) + r_min        T = 1000
// evaluated in float32 with truncation (Math.fround after every operation, like the reference's
// float32 tensors). Pure functions, no ComfyUI imports: the frontend extension draws with them
// and the browser test checks them against the Python implementation.

export const NUM_TIMESTEPS = 1000;

const f32 = Math.fround;

/** Problems with a schedule's parameters, as a short message, or null when it is valid. */
export function scheduleProblem(rank, minRank, power) {
  if (!Number.isInteger(rank) || rank < 1) return `rank must be >= 1 (got ${rank})`;
  if (!Number.isInteger(minRank) || minRank < 1) return `min_rank must be >= 1 (got ${minRank})`;
  if (minRank > rank) return `min_rank (${minRank}) > rank (${rank})`;
  if (!(power > 0) || !Number.isFinite(power)) return `schedule_power must be > 0 (got ${power})`;
  return null;
}

/** Active rank at one discrete timestep t in [0, T] (clamped), as an integer. */
export function rankAt(t, rank, minRank, power, numTimesteps = NUM_TIMESTEPS) {
  const T = f32(numTimesteps);
  const tt = f32(Math.min(Math.max(t, 0), numTimesteps));
  const frac = f32(f32(T - tt) / T);
  const scaled = f32(f32(Math.pow(frac, f32(power))) * f32(rank - minRank));
  return Math.trunc(scaled) + minRank;
}

const cache = new Map();

/** r(t) for t = 0 .. T-1 (an Int32Array), memoised per (rank, min_rank, power). */
export function rankSchedule(rank, minRank, power, numTimesteps = NUM_TIMESTEPS) {
  const key = `${rank}/${minRank}/${power}/${numTimesteps}`;
  let ranks = cache.get(key);
  if (!ranks) {
    ranks = new Int32Array(numTimesteps);
    for (let t = 0; t < numTimesteps; t++) ranks[t] = rankAt(t, rank, minRank, power, numTimesteps);
    if (cache.size > 64) cache.clear();
    cache.set(key, ranks);
  }
  return ranks;
}
