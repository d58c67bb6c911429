// ALiBi slopes (Press et al., "Train Short, Test Long", 2022). Pure functions,
// no LibTorch.
#ifndef ATTNSCORE_SERVER_SCORING_ALIBI_H_
#define ATTNSCORE_SERVER_SCORING_ALIBI_H_

#include <cstdint>
#include <vector>

namespace attnscore::scoring {

// The paper's slope set for `heads` heads (REQUIRES: heads >= 1): for a power
// of two n, the geometric sequence 2^(-8/n), 2^(-16/n), ...; otherwise the
// slopes for the largest power of two below `heads`, followed by every other
// slope of the doubled set. Computed in double, rounded once to float, exactly
// as the reference implementation's Python floats are.
std::vector<float> AlibiSlopes(int64_t heads);

}  // namespace attnscore::scoring

#endif  // ATTNSCORE_SERVER_SCORING_ALIBI_H_
