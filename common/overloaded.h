// Overloaded{lambdas...}: one visitor for std::visit out of one lambda per
// alternative, so that a std::variant of per-kind specs is handled by a closed
// set the compiler checks (a missing alternative does not compile).
//
// Thread safety and errors: none; a header-only helper.
#ifndef ATTNSCORE_COMMON_OVERLOADED_H_
#define ATTNSCORE_COMMON_OVERLOADED_H_

namespace attnscore {

template <class... Fs>
struct Overloaded : Fs... {
  using Fs::operator()...;
};
template <class... Fs>
Overloaded(Fs...) -> Overloaded<Fs...>;

}  // namespace attnscore

#endif  // ATTNSCORE_COMMON_OVERLOADED_H_
